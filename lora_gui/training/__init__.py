"""Training a LoRA adapter: the loop (``loop``) and what it stands on — seeding, the schedule, the speed
levers, where batches come from, the frozen-prefix cache, BatchNorm calibration and DDP. The loop reports
through ``reporter.Reporter`` and knows nothing of jobs, threads or viewers."""
