"""What the tabs share: ``AppContext`` (session state, form fields, the tab strip, the access policy) and the app's limits."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from .access import AccessPolicy

MAX_UPLOAD_MB = 500

@dataclass
class AppContext:
    workspace: Path
    session: gr.State
    browser: gr.BrowserState         # {"owner": random id of this browser} (the owner without --auth)
    tabs: gr.Tabs
    tab_id: gr.Textbox | None = None  # this browser tab's id, filled from sessionStorage when the page loads
    policy: AccessPolicy = field(default_factory=AccessPolicy)
    fields: dict = field(default_factory=dict)   # FIELD_NAMES -> component, filled by the Model and Train tabs
    shared: dict = field(default_factory=dict)   # components one tab offers to others, by name
