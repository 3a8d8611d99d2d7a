"""What every page calls first: database ready, engine host running, sidebar drawn.

Pages are discovered from `pages/` (not `st.navigation`), so any page may be the first
one a browser opens (`/Review?item=42`); this is why the set-up lives here and not in
`app.py`. It is cheap on reruns: the database and the host are cached resources, and the
sidebar reads one small aggregate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

from db.engine import Database, data_dir, database_url
from db.queries import DatasetOverview
from ui import feedback, sidebar
from ui.resources import dataset_list, demo_simulator, engine_host, shared_database
from vqa_engine.errors import VQAError

if TYPE_CHECKING:
    from vqa_engine.host import EngineHost

APP_NAME = "VQA Curator"
PAGES = (
    ("app.py", "Home", ":material/home:"),
    ("pages/1_Upload.py", "Upload", ":material/upload:"),
    ("pages/2_Runs.py", "Runs", ":material/play_arrow:"),
    ("pages/3_Review.py", "Review", ":material/rate_review:"),
    ("pages/4_Export.py", "Export", ":material/download:"),
    ("pages/6_Health.py", "Health", ":material/monitor_heart:"),
    ("pages/5_Settings.py", "Settings", ":material/settings:"),
)


@dataclass(frozen=True)
class PageContext:
    database: Database
    host: EngineHost | None
    data_dir: Path
    datasets: list[DatasetOverview]
    dataset_id: int | None
    curator: str

    @property
    def dataset(self) -> DatasetOverview | None:
        return next((d for d in self.datasets if d.id == self.dataset_id), None)


def _logged_in_name() -> str:
    try:
        if st.user.get("is_logged_in"):
            return str(st.user.get("name") or st.user.get("email") or "")
    except Exception:  # noqa: BLE001 - no authentication configured
        return ""
    return ""


def bootstrap(
    title: str,
    *,
    icon: str = ":material/photo_library:",
    prefer_dataset: Callable[[Database], int | None] | None = None,
) -> PageContext:
    """Set the page up; `prefer_dataset` lets a deep link pick the dataset it belongs to."""
    st.set_page_config(page_title=f"{title} · {APP_NAME}", page_icon=icon, layout="wide")
    url = database_url()
    try:
        database = shared_database(url)
        host = engine_host(url)
    except VQAError as exc:
        st.error(str(exc))
        st.stop()
    except Exception as exc:  # noqa: BLE001 - e.g. PostgreSQL unreachable
        shared_database.clear()
        st.error(
            f"the database at {url.split('@')[-1]} could not be opened ({type(exc).__name__}); "
            "check VQA_DATABASE_URL / VQA_DATA_DIR and that the server is running"
        )
        st.stop()

    datasets = dataset_list(url)
    preferred = prefer_dataset(database) if prefer_dataset else None

    # Our own navigation (config: client.showSidebarNavigation = false), so the home page
    # is called "Home" rather than after its file name.
    st.sidebar.markdown(f"### {APP_NAME}")
    navigation = st.sidebar.container()
    st.sidebar.divider()
    dataset_id = sidebar.dataset_picker(datasets, preferred)
    curator = sidebar.curator_field(_logged_in_name())
    # Links carry the durable choices, so the next page's URL has them too.
    carried = {name: st.query_params[name] for name in sidebar.DURABLE_PARAMS if name in st.query_params}
    for path, label, page_icon in PAGES:
        navigation.page_link(path, label=label, icon=page_icon, query_params=carried)
    if host is None:
        st.sidebar.caption("Runs are processed by a separate worker (`python -m vqa_engine worker`).")
    simulator = demo_simulator()
    if simulator.server is not None:
        st.sidebar.warning(f"SIMULATED endpoint running at {simulator.server.base_url}")

    feedback.show_pending()
    return PageContext(
        database=database,
        host=host,
        data_dir=data_dir(),
        datasets=datasets,
        dataset_id=dataset_id,
        curator=curator,
    )
