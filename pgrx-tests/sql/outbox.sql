-- The outbox: publish writes in the caller's transaction; tick sends due messages with
-- pg_notify and marks them published; a relay claims due, unacknowledged messages under a lease
-- and acknowledges them; what it does not acknowledge in time comes back.
begin;
select regress.at('2030-01-01 00:00:00+00');
select conveyor.publish('orders.created', '{"order": 1}') is not null as published;
select conveyor.publish('orders.created', '{"order": 2}', deliver_at => '2030-01-01 00:05:00+00') is not null as later;
select conveyor.publish('audit', '{"who": "me"}') is not null as other_topic;

select flushed from conveyor.tick();
select topic, payload, published_at is not null as sent from conveyor.outbox order by id;
select flushed from conveyor.tick();

-- a relay claims what is due and not yet acknowledged (optionally by topic)
select claim_token, count(*) over () as n from conveyor.outbox_claim('relay-1', array['orders.created'], 10) \gset
select :n as claimed;
select count(*) as claimed_again_while_leased from conveyor.outbox_claim('relay-2', array['orders.created'], 10);
select conveyor.outbox_ack(array(select id from conveyor.outbox where claim_token = :'claim_token'), :'claim_token');
-- acknowledged: never claimed again
select regress.at('2030-01-01 00:01:00+00');
select count(*) as after_ack from conveyor.outbox_claim('relay-2', array['orders.created'], 10);

-- not acknowledged within the lease: claimable again, by anyone
select count(*) from conveyor.outbox_claim('relay-1', array['audit'], 10, lease => '30s');
select regress.at('2030-01-01 00:01:31+00');
select topic, claims, claim_token as second_token from conveyor.outbox_claim('relay-2', null, 10) \gset
select :'topic' as topic, :claims as claims;
-- the first relay's late ack does not count
select conveyor.outbox_ack(array(select id from conveyor.outbox where topic = 'audit'), gen_random_uuid()) as stale_ack;
select conveyor.outbox_ack(array(select id from conveyor.outbox where topic = 'audit'), :'second_token') as ack;

-- the later message comes due
select regress.at('2030-01-01 00:05:00+00');
select flushed from conveyor.tick();
select count(*) from conveyor.outbox_claim('relay-1', null, 10);

select regress.try($$select conveyor.publish('bad topic!', '{}')$$);
select regress.try($$select conveyor.publish(repeat('t', 64), '{}')$$);
select regress.try($$select conveyor.publish('t', null)$$);
select regress.try($$select * from conveyor.outbox_claim('', null, 10)$$);
-- the channels of pg_conveyor itself are reserved (issue 13, finding 7)
select regress.try($$select conveyor.publish('conveyor.delivery', '{}')$$);
select regress.try($$select conveyor.publish('conveyor.emails', '{}')$$);
rollback;
