"""Reports built from stored results only: sweep rows (JSON lines), verification rows (JSON)
and pytest-benchmark JSON. Nothing here runs a backend.

    python -m reports build RESULTS_DIR [-o report.html]
    python -m reports compare BASELINE.jsonl CANDIDATE.jsonl [--threshold 1.10]
"""
