"""dask-coded-als: coded alternating least squares on Dask, tolerant of slow and dead workers."""

from dask_coded_als.als import fit_als
from dask_coded_als.coding.codes import ALSCode, EntangledPolynomialCode, NumericalWarning
from dask_coded_als.coding.points import evaluation_points, worst_case_condition_number
from dask_coded_als.data.ingest import ingest_dataframe
from dask_coded_als.engine import CodedALS
from dask_coded_als.errors import ClusterError, CodedALSError, InputError

__version__ = "0.1.0"

__all__ = [
    "ALSCode",
    "ClusterError",
    "CodedALS",
    "CodedALSError",
    "EntangledPolynomialCode",
    "InputError",
    "NumericalWarning",
    "evaluation_points",
    "fit_als",
    "ingest_dataframe",
    "worst_case_condition_number",
    "__version__",
]
