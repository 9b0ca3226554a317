"""Runners: claiming jobs, computer-use tasks and robot macro executions exactly once
(protocol.py, controller.py), waking long-polling claims (queue.py), returning lost leases
to the queue (reaper.py) and the reference runner (runner.py). docs/runners.md."""
