"""Hydra configs of the study (a package so that Hydra finds them when installed)."""
