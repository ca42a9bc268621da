"""The stages of the request pipeline, one module each (see ``proxy/pipeline.py``)."""
