"""Launch the lora_gui app:  python app.py [--host H] [--port P] [--workspace DIR] [--data DIR] ...

The same as the installed ``lora-gui`` command; ``python app.py --help`` lists every flag.
"""
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

if __name__ == "__main__":
    from lora_gui.ui.launch import main
    sys.exit(main(prog="python app.py"))
