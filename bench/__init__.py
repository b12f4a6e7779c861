"""mrc-cli's benchmarks, run as scripts (`python bench/bench_suite.py --quick`); a package so that tests import the
Hugging Face recipe oracle as `bench.hf_recipe` and the scripts share `bench.common`."""
