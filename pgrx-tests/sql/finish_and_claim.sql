-- finish_and_claim: the runs in hand finished and the next ones claimed in one call (one
-- transaction, one commit per worker cycle). Rows of kind 'finished' (one per item, status null
-- for a stale lease) come before rows of kind 'claimed'; bad input to either part refuses the
-- whole call, nothing finished and nothing claimed.
begin;
select regress.at('2030-01-01 00:00:00+00');
select conveyor.define_task('fc', queue => 'fcq', max_attempts => 2, delay => '0s');
select count(conveyor.enqueue('fc', jsonb_build_object('n', n))) from generate_series(1, 4) n;

-- nothing in hand: a plain claim
create temp table hand as
select * from conveyor.finish_and_claim(null, 'fcq', 'w1', 2);
select kind, status, payload, attempt from hand order by payload ->> 'n';

-- finish both (one success, one failure) and claim the next two, in one call
create temp table next as
select * from conveyor.finish_and_claim(
    (select jsonb_agg(case when h.payload ->> 'n' = '1'
                           then jsonb_build_object('run_id', h.run_id, 'lease_token', h.lease_token, 'outcome', 'succeeded')
                           else jsonb_build_object('run_id', h.run_id, 'lease_token', h.lease_token, 'outcome', 'failed',
                                                   'message', 'boom') end order by h.payload ->> 'n')
     from hand h),
    'fcq', 'w1', 2);
select n.kind, n.status, n.payload, n.lease_token is not null as leased from next n order by n.kind desc, n.payload ->> 'n';
select regress.counts(h.run_id) from hand h order by h.payload ->> 'n';

-- a stale item (the first run is finished already) is reported with status null; the claim goes
-- on, and takes the retry of the second, delivered by tick
select delivered from conveyor.tick();
select kind, status, payload, attempt from conveyor.finish_and_claim(
    (select jsonb_build_array(jsonb_build_object('run_id', h.run_id, 'lease_token', h.lease_token, 'outcome', 'succeeded'))
     from hand h where h.payload ->> 'n' = '1'),
    'fcq', 'w1', 1);

-- bad input refuses the whole call: the finish in it is not applied, nothing is claimed
select regress.try(format($$select * from conveyor.finish_and_claim(%L, 'fcq', 'w1', 0)$$,
    (select jsonb_agg(jsonb_build_object('run_id', n.run_id, 'lease_token', n.lease_token, 'outcome', 'succeeded'))
     from next n where n.kind = 'claimed')));
select regress.try($$select * from conveyor.finish_and_claim('{"run_id": 1}', 'fcq', 'w1')$$);
select n.payload ->> 'n' as n, regress.counts(n.run_id) from next n where n.kind = 'claimed' order by 1;
select count(*) filter (where status = 'queued') as queued from conveyor.runs where queue = 'fcq';

-- an empty array finishes nothing; an unknown or paused queue claims nothing
select count(*) from conveyor.finish_and_claim('[]', 'nope', 'w1');
rollback;
