"""What is deleted, and when: deleting jobs (llava-batch delete, retention) in bounded steps,
and collecting the stored inputs no job references any more."""
