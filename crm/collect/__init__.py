"""The HTTP collector: Segment's Tracking API in front of the file loader (``crm collect``)."""
