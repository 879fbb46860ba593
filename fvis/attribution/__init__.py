"""Attribution: which input pixels drove a decision, computed by Captum from a YAML file.

Its schema lives with the others, in `fvis.config.attribution` (the table of methods in
`fvis.config.attribution_methods`); `inputs`, `baselines` and `masks` build tensors from it,
`methods` runs Captum, `metrics` scores the results, `heatmaps` draws them and `run` ties it
together and writes the run folder.
"""
