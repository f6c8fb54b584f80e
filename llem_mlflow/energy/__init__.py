"""Energy meters: NVML (counter + power sampler), CodeCarbon, idle baseline, validity warnings.

`monitor.EnergyMonitor` is the one entry point the runner uses. Nothing here imports mlflow.
"""
