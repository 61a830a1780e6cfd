"""dask-coded-als: coded alternating least squares on Dask."""

from dask_coded_als.points import evaluation_points, worst_case_condition_number

__version__ = "0.1.0"

__all__ = ["evaluation_points", "worst_case_condition_number", "__version__"]
