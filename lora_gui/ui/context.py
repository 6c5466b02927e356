"""What the tabs share: ``AppContext`` (session state, form fields, the tab strip) and the app's limits."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

MAX_UPLOAD_MB = 500

@dataclass
class AppContext:
    workspace: Path
    session: gr.State
    browser: gr.BrowserState
    tabs: gr.Tabs
    fields: dict = field(default_factory=dict)   # FIELD_NAMES -> component, filled by the Model and Train tabs
    shared: dict = field(default_factory=dict)   # components one tab offers to others, by name
