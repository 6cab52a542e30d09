"""The tuneforge service: `tuneforge serve` (API + dashboard), `tuneforge worker` (runs jobs), `tuneforge keys`.

Nothing under tuneforge.service imports torch; training and inference run in child processes.
"""
