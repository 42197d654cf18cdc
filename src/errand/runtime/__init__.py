"""The worker: a supervisor process and the job processes it forks."""
