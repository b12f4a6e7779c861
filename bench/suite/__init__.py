"""The parts of bench/bench_suite.py, one module each: preprocess, train, inference. A part module holds what the
main process runs (`bench_<part>`: data, the sides to run, the figures derived from them), its workers (each measured
side, run in a fresh process by `sides.run_side`) and its table rows. sides.py is the process plumbing."""
