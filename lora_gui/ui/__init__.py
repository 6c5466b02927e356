"""The Gradio app, the only part of lora_gui that imports gradio."""
