"""The things people run: the Flower App, Hydra configs, the runner, baselines, plots, benchmarks."""
