"""Background jobs around the training loop: a thread per run (``training_job``), one training at a time
per device (``device_queue``), the jobs of this process (``registry``) and multi-process torchrun runs
(``torchrun_job``, ``torchrun_launch``, ``run_follower``)."""
