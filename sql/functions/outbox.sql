-- functions/outbox.sql: durable messages written in the caller's transaction and sent later, at least
-- once: tick sends each due message with pg_notify on its topic's channel; a relay can also
-- claim messages in batches under a lease and acknowledge them once forwarded.

-- publish: write a message in the caller's transaction (rolled back with it). When deliver_at
-- comes, tick wakes the listeners of channel `topic` (an empty NOTIFY) and relays claim it.
create or replace function conveyor.publish(topic text, payload jsonb default '{}', deliver_at timestamptz default null)
returns conveyor.ulid
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
declare
    v_now timestamptz := conveyor._now();
    v_id conveyor.ulid := conveyor.ulid_generate();
begin
    if publish.topic is null or publish.topic !~ '^[A-Za-z0-9_.:/-]{1,63}$' then
        perform conveyor._raise_invalid(format('invalid topic %s: use 1 to 63 letters, digits or _.:/- (it names a NOTIFY channel)',
                                               coalesce(quote_literal(publish.topic), 'null')));
    end if;
    if publish.topic like 'conveyor.%' then
        perform conveyor._raise_invalid(format('topic %s is reserved: channels named conveyor.* are pg_conveyor''s own '
                                               '(queue wakeups, the delivery outbox)', quote_literal(publish.topic)));
    end if;
    perform conveyor._check_time('deliver_at', publish.deliver_at, v_now);
    if publish.payload is null then
        perform conveyor._raise_invalid('payload must be JSON, got null');
    end if;
    insert into conveyor.outbox (id, topic, payload, created_at, deliver_at)
    values (v_id, publish.topic, publish.payload, v_now, coalesce(publish.deliver_at, v_now));
    return v_id;
end
$$;

comment on function conveyor.publish is
    'write an outbox message in the caller''s transaction; tick NOTIFYs channel topic when deliver_at comes; relays claim/ack it';

-- _flush_outbox: mark due unpublished messages published and wake each topic's listeners with
-- an empty NOTIFY on the topic's channel (delivered at commit). Notifications carry no payload:
-- any login may LISTEN on any channel, and NOTIFY a forged one, so a channel is only a wakeup;
-- messages are read through outbox_claim, which only granted roles may call.
create or replace function conveyor._flush_outbox(p_now timestamptz, p_limit integer)
returns integer
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_count integer;
    v_topics text[];
begin
    with due as (
        select o.id from conveyor.outbox o
        where o.published_at is null and o.deliver_at <= p_now
        order by o.deliver_at, o.id
        limit p_limit
        for update skip locked
    ),
    sent as (
        update conveyor.outbox o set published_at = p_now
        from due where o.id = due.id
        returning o.id, o.topic, o.payload
    )
    select count(*), array_agg(distinct s.topic) into v_count, v_topics from sent s;
    perform pg_notify(t.topic, '') from unnest(v_topics) as t(topic);
    return v_count;
end
$$;

-- outbox_claim: a relay claims up to `max` due, unacknowledged messages (optionally of some
-- topics) under a lease; messages it does not acknowledge in time are claimable again.
create or replace function conveyor.outbox_claim(
    relay text,
    topics text[] default null,
    max integer default 100,
    lease conveyor.duration default '30s'
)
returns table (id conveyor.ulid, topic text, payload jsonb, deliver_at timestamptz, claim_token uuid, claims integer)
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
declare
    v_now timestamptz := conveyor._now();
    v_token uuid := gen_random_uuid();
begin
    if outbox_claim.relay is null or btrim(outbox_claim.relay) = '' then
        perform conveyor._raise_invalid('relay must name the claiming relay');
    end if;
    if outbox_claim.max is null or outbox_claim.max not between 1 and 10000 then
        perform conveyor._raise_invalid(format('invalid max %s: expected 1 to 10000', outbox_claim.max));
    end if;
    return query
    with picked as (
        select o.id from conveyor.outbox o
        where o.acked_at is null and o.deliver_at <= v_now
          and (outbox_claim.topics is null or o.topic = any(outbox_claim.topics))
          and (o.claim_expires_at is null or o.claim_expires_at <= v_now)
        order by o.deliver_at, o.id
        limit outbox_claim.max
        for update skip locked
    )
    update conveyor.outbox o
    set claim_token = v_token, claimed_by = outbox_claim.relay,
        claim_expires_at = v_now + outbox_claim.lease::interval, claims = o.claims + 1
    from picked
    where o.id = picked.id
    returning o.id, o.topic, o.payload, o.deliver_at, o.claim_token, o.claims;
end
$$;

comment on function conveyor.outbox_claim is
    'relay: claim due unacknowledged outbox messages under a lease (at least once: unacked ones come back after it)';

-- outbox_ack: acknowledge claimed messages as forwarded; returns how many were acknowledged
-- (a message whose claim expired and was taken by another relay is not).
create or replace function conveyor.outbox_ack(ids conveyor.ulid[], claim_token uuid)
returns integer
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
declare
    v_count integer;
begin
    update conveyor.outbox o
    set acked_at = conveyor._now(), claim_expires_at = null
    where o.id = any(outbox_ack.ids) and o.claim_token = outbox_ack.claim_token and o.acked_at is null;
    get diagnostics v_count = row_count;
    return v_count;
end
$$;

comment on function conveyor.outbox_ack is 'relay: acknowledge forwarded outbox messages of a claim';
