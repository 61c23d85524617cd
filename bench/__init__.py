"""The benchmark suite: ``python -m bench setup|run|report|profile`` (see ``bench/README.md``)."""
