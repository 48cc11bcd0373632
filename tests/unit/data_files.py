"""Writing a data file of named arrays for the loader tests."""

import h5py
import numpy as np


def write_arrays(path, arrays: dict) -> None:
    """arrays (name -> array) into `path`: an npz file if it ends in .npz, else HDF5 datasets."""
    if str(path).endswith(".npz"):
        np.savez(path, **arrays)
    else:
        with h5py.File(path, "w") as f:
            for name, a in arrays.items():
                f[name] = a
