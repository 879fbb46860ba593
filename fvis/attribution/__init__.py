"""Attribution: which input pixels drove a decision, computed by Captum from a YAML file.

`config` holds the schema (torch-free), `registry` the table of methods, `inputs`, `baselines`
and `masks` build tensors from the config, `methods` runs Captum, `metrics` scores the
results, `heatmaps` draws them and `run` ties it together and writes the run folder.
"""
