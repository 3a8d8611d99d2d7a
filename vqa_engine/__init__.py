"""VQA Curator's engine: ingest, model client, generation runs, formats. No Streamlit here."""
