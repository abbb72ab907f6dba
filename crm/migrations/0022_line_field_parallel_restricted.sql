-- raw.line_field catches errors (a sub-transaction), which a parallel worker cannot start: a
-- parallel plan of the Live dashboard's rejections failed with "cannot start subtransactions
-- during a parallel operation". Restricted, it runs in the leader only.
alter function raw.line_field(text, text, integer) parallel restricted;
