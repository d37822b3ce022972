# Stage 5: the report — tables (MD/CSV/HTML) and figures regenerated from every seed's metric files.
# Declaration: src/wsss/registry.py.

stage_rule("report")
