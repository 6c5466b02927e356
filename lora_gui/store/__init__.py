"""What lasts on disk: run folders and their typed records (``run_folder``, ``records``), the native
adapter file (``adapter_file``, checked by ``adapter_check``), every export format with its reader
beside its writer (``*_format``, dispatched by ``exports``) and the workspace clean-up (``cleanup``)."""
