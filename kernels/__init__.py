"""CUDA C sources of flowtie_fast, shipped as package data (found by flowtie_fast._cuda)."""
