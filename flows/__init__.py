"""Prefect flows: composition of pipeline and model steps, nothing else."""
