"""Streamlit-only pieces shared by the pages: bootstrap, sidebar, item card, small widgets.

Nothing here decides anything: every action is a call into `vqa_engine/` or `db/`.
"""
