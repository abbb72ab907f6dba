-- Claiming due deliveries reads two indexes instead of every delivery: the planned ones in send
-- order (slot, then id: an index scan that stops at the batch), and the expired leases.
create index if not exists deliveries_due_order_idx
    on crm.deliveries (slot, delivery_id) where state = 'planned';
drop index if exists crm.deliveries_due_idx;
create index if not exists deliveries_leased_idx
    on crm.deliveries (claimed_at) where state = 'sending';
