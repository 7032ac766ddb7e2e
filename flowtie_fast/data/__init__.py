"""Files shipped with flowtie_fast: the default flow model (flow_default.pt, see MODEL.md)."""
