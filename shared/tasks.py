"""Names both sides of the queue agree on; the web sends by name and never imports the worker."""

PREDICT_TASK = "digits.predict"
PREDICT_BATCH_TASK = "digits.predict_batch"
