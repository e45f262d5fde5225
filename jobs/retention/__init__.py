"""What is deleted, and when: deleting jobs (llava-batch delete, retention) in bounded steps
(``jobs.retention.purge``), and collecting the stored inputs no job references any more
(``jobs.retention.blobs``)."""
