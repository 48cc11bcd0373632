"""Message tags between the parameter server (rank 0) and the workers."""

TAG_GRADIENT = 1  # worker -> server: a gradient, tagged with the topology version it was computed on
TAG_MODEL = 2     # server -> worker: weights (same topology) or topology + weights (after a change)
TAG_PHASE2 = 3    # server -> worker: start local training of this replica (topology, weights, state)
TAG_REPLICA = 4   # worker -> server: the replica after a phase-2 epoch
TAG_STOP = 5      # server -> worker: the run is over (worker 1 -> server: please stop, debug.stop_at_batch)
TAG_CONTINUE = 6  # server -> worker: phase 2 goes on, train the next epoch
TAG_MEMORY_PLAN = 7  # server -> worker, before anything else: go / stop after the memory plan
TAG_WINDOW = 8  # server -> same-node workers: join the collective shared-window allocation (your channel's place)
TAG_POSITION = 9  # worker -> server, after a STOP inside an epoch: where its data stream stands
