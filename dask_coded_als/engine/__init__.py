"""The master on Dask: the estimator, the per-fit master, the schemes, the workers' tasks.

The engine knows Dask and the codes; it knows nothing of file formats.

- :mod:`~dask_coded_als.engine.estimator`: :class:`CodedALS` (parameters, validation, ``fit``);
- :mod:`~dask_coded_als.engine.master`: :class:`~dask_coded_als.engine.master.Master`, one fit
  on the cluster (shards, rounds, exchanges, recovery);
- :mod:`~dask_coded_als.engine.schemes`: what each mode and protocol computes where, and how a
  shard is built (at the master, or by its worker from a source it opens);
- :mod:`~dask_coded_als.engine.exchange`: one exchange described as data;
- :mod:`~dask_coded_als.engine.tasks`: what runs on the workers (stoppable tasks);
- :mod:`~dask_coded_als.engine.faults`: straggler delays and kills carried out;
- :mod:`~dask_coded_als.engine.records`: the history's stage records and the phase timings.
"""

from dask_coded_als.engine.cluster import local_cluster
from dask_coded_als.engine.estimator import DTYPES, MODES, PROTOCOLS, CodedALS

__all__ = ["CodedALS", "DTYPES", "MODES", "PROTOCOLS", "local_cluster"]
