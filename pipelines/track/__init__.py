"""The MLflow record: the tracker, a run's open/finish record, data versions, the logged model."""
