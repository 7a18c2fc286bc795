"""csd_nerfstudio: CSD-Edit as a nerfstudio method (``ns-train csd-edit``)."""

try:
    import nerfstudio  # noqa: F401
except ImportError as err:  # nerfstudio is the optional extra; csd2d works without it
    raise ImportError(
        "csd_nerfstudio (ns-train csd-edit) needs nerfstudio, which is not installed: "
        'pip install "csd-edit[nerfstudio]"'
    ) from err


def _allow_numpy_scalars_in_checkpoints() -> None:
    """nerfstudio 1.1.5's LR schedulers put numpy floats into checkpoints, and torch >= 2.6 loads checkpoints
    with ``weights_only=True``, which refuses them: ``--load-dir``, ``ns-render`` and ``ns-viewer`` then fail.
    Allow exactly numpy's scalar reconstruction and float dtypes (plain data, no code) for those loads."""
    import numpy as np
    import torch

    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is None:  # torch < 2.4 loads these without an allowlist
        return
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:
        from numpy.core.multiarray import scalar
    entries = [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype]
    entries += [getattr(np.dtypes, n) for n in ("Float64DType", "Float32DType") if hasattr(np, "dtypes")]
    add(entries)


_allow_numpy_scalars_in_checkpoints()
