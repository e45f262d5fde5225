"""What happens after a job's time is up: stored inputs no item references are collected
(``jobs.retention.blobs``)."""
