"""``syllablelm pipeline``: every stage of a run in order, on one process or torchrun/SLURM ranks.

- :mod:`.runner`: the command (stages, skip and resume, requeue, the process group);
- :mod:`.checks`: ``--dry-run``, every problem of a pipeline config at once;
- :mod:`.stage_configs`: reading a stage's Lightning config (outputs, resume checkpoint, flag values);
- :mod:`.file_formats`: reading just enough of a file to know what it is;
- :mod:`.launch`: who a process is (torchrun, SLURM, NODE_RANK), barriers, the shared-filesystem check.
"""
