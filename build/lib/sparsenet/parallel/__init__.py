"""Data-parallel training over MPI: a parameter server on rank 0 and workers on ranks 1..K.

Only `sparsenet.parallel.transport` touches mpi4py, and only when first used: importing this
package (or sparsenet) never starts MPI.
"""
