"""The pipeline's contracts and decisions: the stage table, stage records, config validation, the plan, run lock, memory and cluster limits."""
