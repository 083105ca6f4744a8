"""The ``e2e`` and ``slow`` markers, applied at collection so no test body changes.

- ``e2e``: every test under ``tests/e2e/`` (the whole suite as separate processes).
- ``slow``: the tests listed in :data:`SLOW`, measured as the slowest of the rest
  (``nice -n 19 .venv/bin/python -m pytest tests --ignore=tests/e2e --durations=60``).

The fast loop is ``./dev test -m "not e2e and not slow"``; the full suite still runs everything.
When a test becomes one of the slowest, add its node id (or its file, for a whole module) here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
E2E = TESTS / "e2e"

# Node ids relative to the repository root: a file marks every test in it, a ``file::name``
# marks that test (every parametrization of it). Measured 2026-11-30 on the shared 2-core machine
# (``--durations=0``, setup + call + teardown of every parametrization): the tests taking 0.7 s or
# more in a loaded run of everything but e2e (~530 s of its ~600 s), then the integration tests
# taking 0.3 s or more in a calm run of what was left.
SLOW: tuple[str, ...] = (
    "tests/deploy/test_chart_render.py::test_every_manifest_validates",
    "tests/deploy/test_chart_upgrade.py::test_nothing_is_renamed_or_deleted_without_a_note",
    "tests/deploy/test_chart_upgrade.py::test_objects_the_upgrade_adds_are_expected",
    "tests/deploy/test_chart_upgrade.py::test_workloads_upgrade_in_place",
    "tests/deploy/test_runtime_wheel.py::test_wheel_has_no_development_code",
    "tests/deploy/test_runtime_wheel.py::test_wheel_modules_import_without_development_code",
    "tests/integration/auth/test_ingress_callback.py::test_oauth_flow_through_ingress_callback",
    "tests/integration/auth/test_keys.py::test_rotation_keeps_every_connection_readable",
    "tests/integration/auth/test_oauth.py::test_burst_of_401s_causes_one_refresh",
    "tests/integration/auth/test_oauth.py::test_expiry_forces_a_refresh",
    "tests/integration/auth/test_oauth.py::test_hub_id_from_token_metadata_when_the_response_has_none",
    "tests/integration/auth/test_oauth.py::test_revocation_waits_for_hubspot",
    "tests/integration/auth/test_oauth.py::test_revoked_refresh_token_needs_reauth",
    "tests/integration/auth/test_oauth.py::test_state_replay_forgery_and_expiry_are_refused",
    "tests/integration/auth/test_refresh.py::test_a_crashed_lock_holder_blocks_only_until_its_lock_expires",
    "tests/integration/auth/test_refresh.py::test_a_hanging_token_endpoint_is_abandoned_before_the_lock_expires",
    "tests/integration/auth/test_refresh.py::test_background_refresher_keeps_idle_connections_fresh_and_finds_dead_ones",
    "tests/integration/auth/test_refresh.py::test_hubspot_down_keeps_serving_the_valid_token_then_says_unavailable",
    "tests/integration/auth/test_refresh.py::test_refresh_without_new_refresh_token_keeps_the_old_one",
    "tests/integration/auth/test_refresher_cost.py::test_a_stale_registry_entry_heals_and_replicas_refresh_once",
    "tests/integration/auth/test_refresher_cost.py::test_an_idle_refresher_pass_costs_the_same_for_10_and_2000_connections",
    "tests/integration/auth/test_refresher_cost.py::test_the_registry_follows_refresh_reauth_revocation",
    "tests/integration/auth/test_refresher_cost.py::test_with_refresh_idle_after_an_idle_connection_waits_for_its_next_use",
    "tests/integration/auth/test_replicas.py::test_fifty_calls_over_three_processes_refresh_once",
    "tests/integration/auth/test_replicas.py::test_needing_reauth_gauge_counts_dead_connections",
    "tests/integration/auth/test_secrets.py::test_no_plaintext_secret_in_redis_logs_or_spans",
    "tests/integration/ingress/test_fuzz.py::test_fuzzed_requests_never_break_ingress",
    "tests/integration/ingress/test_journal_and_oauth.py::test_oauth_callback_completes_through_auth",
    "tests/integration/ingress/test_journal_and_oauth.py::test_reconcile_enqueues_only_what_no_webhook_reported",
    "tests/integration/ingress/test_senders_and_outage.py::test_redis_outage_answers_503_and_the_retry_is_processed_once",
    "tests/integration/ingress/test_senders_and_outage.py::test_sandbox_deliveries_are_accepted_and_stale_ones_refused",
    "tests/integration/ingress/test_slow_clients.py::test_a_kept_alive_connection_trickling_its_next_request_is_cut_off",
    "tests/integration/ingress/test_slow_clients.py::test_a_silent_connection_is_closed",
    "tests/integration/ingress/test_slow_clients.py::test_headers_under_the_limit_arriving_in_pieces_are_accepted",
    "tests/integration/ingress/test_slow_clients.py::test_trickled_headers_and_body_are_cut_off_while_webhooks_flow",
    "tests/integration/ingress/test_tracing.py::test_off_mode_records_no_span_and_keeps_the_callers_context",
    "tests/integration/ingress/test_tracing.py::test_request_mode_gives_every_request_its_server_span",
    "tests/integration/ingress/test_webhook.py::test_bad_requests_get_their_status_and_enqueue_nothing",
    "tests/integration/ingress/test_webhook.py::test_echo_of_our_own_write_is_dropped",
    "tests/integration/ingress/test_webhook.py::test_same_batch_five_times_is_enqueued_once",
    "tests/integration/mapper/test_feed_marks.py::test_a_taken_mark_comes_back_when_its_subscriber_dies",
    "tests/integration/mapper/test_feed_scale.py::test_a_busy_portals_changes_reach_a_subscriber_beside_2000_idle_portals",
    "tests/integration/mapper/test_feed_scale.py::test_an_idle_subscriber_costs_the_same_with_10_or_2000_portals",
    "tests/integration/mapper/test_feed_scale.py::test_an_upgrade_delivers_every_change_left_on_the_per_portal_feed_exactly_once",
    "tests/integration/mapper/test_inbound_faults.py::test_a_hung_read_holds_up_only_its_own_batch",
    "tests/integration/mapper/test_inbound_faults.py::test_a_reconciled_record_holding_what_writer_wrote_for_a_queued_push_is_not_published",
    "tests/integration/mapper/test_inbound_faults.py::test_an_unconnected_portal_is_parked_then_delivered_once_when_connected",
    "tests/integration/mapper/test_inbound_faults.py::test_reconciliation_after_pushes_sends_nothing_to_the_feed",
    "tests/integration/mapper/test_inbound_faults.py::test_what_can_never_succeed_is_dead_lettered_and_replays",
    "tests/integration/mapper/test_journal_formats.py::test_entries_of_both_formats_reach_the_feed_once",
    "tests/integration/mapper/test_mapper_api.py::test_feed_delivers_acks_and_redelivers",
    "tests/integration/mapper/test_mapper_objects.py::test_custom_object_mapped_pushed_edited_in_the_ui_and_delivered_on_the_feed",
    "tests/integration/mapper/test_mapper_objects.py::test_pushed_deletions_follow_the_mappings_ownership_rule",
    "tests/integration/mapper/test_mapper_objects.py::test_tickets_with_stage_mapping_and_notes_associated_to_contacts",
    "tests/integration/mapper/test_mapper_startup.py::test_bad_mappings_exit_2_listing_every_problem",
    "tests/integration/mapper/test_mapper_startup.py::test_bad_setting_exits_2_naming_the_variable",
    "tests/integration/mapper/test_mapper_sync.py::test_a_hubspot_owned_field_is_never_overwritten",
    "tests/integration/mapper/test_mapper_sync.py::test_a_two_way_edit_does_not_loop",
    "tests/integration/mapper/test_mapper_sync.py::test_concurrent_retries_of_one_push_write_once",
    "tests/integration/mapper/test_mapper_sync.py::test_deletions_and_merges_reach_the_feed",
    "tests/integration/mapper/test_mapper_sync.py::test_inbound_span_continues_the_ingress_trace",
    "tests/integration/mapper/test_mapper_sync.py::test_push_writes_and_an_identical_push_costs_nothing",
    "tests/integration/mapper/test_mapper_sync.py::test_two_replicas_in_one_group_publish_each_change_once",
    "tests/integration/mapper/test_mapper_sync.py::test_ui_edit_reaches_subscriber_once_despite_duplicates_and_a_killed_mapper",
    "tests/integration/mapper/test_mapper_sync.py::test_validate_and_suggest_against_the_portals_properties",
    "tests/integration/mapper/test_portal_config.py::test_a_bad_override_is_refused_and_the_previous_version_stays",
    "tests/integration/mapper/test_portal_config.py::test_a_pilot_set_through_the_config_service_refuses_pushes",
    "tests/integration/mapper/test_portal_config.py::test_a_tenant_override_applies_to_its_portals_below_their_own",
    "tests/integration/mapper/test_portal_config.py::test_an_override_changes_only_its_portal_on_both_replicas",
    "tests/integration/mapper/test_portal_config.py::test_history_lists_versions_and_rollback_restores",
    "tests/integration/mapper/test_portal_config.py::test_invalid_changes_name_the_field_and_store_nothing",
    "tests/integration/mapper/test_portal_config.py::test_overrides_are_validated_against_each_portals_own_properties",
    "tests/integration/mapper/test_portal_config.py::test_the_change_feed_of_a_portal_uses_its_override",
    "tests/integration/mapper/test_portal_config.py::test_the_cli_sets_shows_lists_and_rolls_back",
    "tests/integration/redis_faults/test_redis_outage.py::test_redis_down_answers_unavailable_with_retry_info",
    "tests/integration/redis_faults/test_redis_restart.py::test_first_calls_after_a_restart_succeed_and_ingress_stays_serving",
    "tests/integration/redis_faults/test_redis_restart.py::test_workers_resume_after_a_restart_and_log_warnings",
    "tests/integration/sandbox/test_sandbox_admin.py::test_every_fault_status",
    "tests/integration/sandbox/test_sandbox_admin.py::test_fault_error_rate_is_a_fraction",
    "tests/integration/sandbox/test_sandbox_admin.py::test_latency_and_timeout",
    "tests/integration/sandbox/test_sandbox_cli.py::test_standalone_server_with_yaml_and_flags",
    "tests/integration/sandbox/test_sandbox_core.py::test_contact_crud",
    "tests/integration/sandbox/test_sandbox_core.py::test_merged_away_ids_read_as_the_primary",
    "tests/integration/sandbox/test_sandbox_core.py::test_values_are_strings_on_the_wire",
    "tests/integration/sandbox/test_sandbox_limits.py::test_account_details_and_daily_usage",
    "tests/integration/sandbox/test_sandbox_limits.py::test_plan_presets",
    "tests/integration/sandbox/test_sandbox_search.py::test_10k_cap_and_the_restart_from_last_id_backfill",
    "tests/integration/sandbox/test_sandbox_webhooks.py::test_batches_of_at_most_100_events_and_10_in_flight",
    "tests/integration/sandbox/test_sandbox_webhooks.py::test_gives_up_after_ten_retries",
    "tests/integration/sandbox/test_sandbox_webhooks.py::test_pause_and_resume_deliveries",
    "tests/integration/sandbox/test_sandbox_webhooks.py::test_timeout_is_retried",
    "tests/integration/security/test_call_matrix.py::test_call_matrix",
    "tests/integration/security/test_caller_auth.py::test_the_process_exits_2_naming_the_variables",
    "tests/integration/security/test_request_bounds.py::test_consumer_groups_are_bounded_in_name_and_number",
    "tests/integration/security/test_request_bounds.py::test_push_request_id_and_external_id_are_bounded",
    "tests/integration/security/test_request_bounds.py::test_replay_request_id_is_bounded",
    "tests/integration/security/test_request_bounds.py::test_submit_writes_request_id_is_bounded",
    "tests/integration/tenants/test_tenant_cli.py::test_delete_removes_every_key_of_the_portal_and_nothing_else",
    "tests/integration/tenants/test_tenant_cli.py::test_list_pages_through_100000_portals_each_once",
    "tests/integration/tenants/test_tenant_cluster.py::test_delete_on_a_cluster_reads_one_slot_and_cleans_every_registry",
    "tests/integration/test_redis_cluster.py::test_a_lost_node_is_an_outage_and_its_return_ends_it",
    "tests/integration/test_redis_cluster.py::test_feed_delivers_changes_of_two_portals_whose_keys_live_on_different_nodes",
    "tests/integration/test_redis_cluster.py::test_webhooks_keep_flowing_while_the_portal_slot_moves_to_another_node",
    "tests/integration/test_redis_cluster.py::test_writer_answers_a_lost_node_with_unavailable_and_its_queue_recovers",
    "tests/integration/test_redis_cluster.py::test_writer_serves_two_portals_whose_keys_live_on_different_nodes",
    "tests/integration/test_redis_sentinel.py::test_a_sentinel_client_recovers_after_the_master_restarts",
    "tests/integration/test_redis_tls.py::test_rediss_refuses_a_server_of_another_ca",
    "tests/integration/test_redis_tls.py::test_rediss_without_a_client_certificate_is_refused",
    "tests/integration/test_service_host.py::test_a_background_task_that_fails_is_started_again",
    "tests/integration/test_service_host.py::test_stop_ends_a_background_task_whose_cancellation_was_lost",
    "tests/integration/test_service_host.py::test_stop_gives_up_on_a_task_that_never_ends",
    "tests/integration/test_tls.py::test_half_written_rotation_keeps_the_previous_certificate",
    "tests/integration/writer/test_circuit_shared.py::test_one_replica_opens_for_all_and_one_probe_closes_for_all",
    "tests/integration/writer/test_portal_config.py::test_a_pilot_refuses_writes_of_its_portal_only",
    "tests/integration/writer/test_writer_durability.py::test_a_create_cut_off_by_a_killed_writer_is_never_sent_twice",
    "tests/integration/writer/test_writer_durability.py::test_a_refusal_before_sending_does_not_resend_a_create_batch_that_went",
    "tests/integration/writer/test_writer_durability.py::test_a_writer_killed_mid_batch_loses_nothing_it_accepted",
    "tests/integration/writer/test_writer_durability.py::test_hubspots_headers_count_requests_writer_did_not_make",
    "tests/integration/writer/test_writer_durability.py::test_queued_writes_are_durable_and_accepted_once",
    "tests/integration/writer/test_writer_durability.py::test_three_writer_processes_never_exceed_the_portals_limit",
    "tests/integration/writer/test_writer_durability.py::test_writer_learns_the_portals_real_limit_and_never_sends_past_it",
    "tests/integration/writer/test_writer_errors.py::test_400_isolates_the_bad_records_and_dead_letters_them",
    "tests/integration/writer/test_writer_errors.py::test_401_asks_auth_for_the_current_token_and_retries_once",
    "tests/integration/writer/test_writer_errors.py::test_403_dead_letters_without_retrying",
    "tests/integration/writer/test_writer_errors.py::test_409_updates_the_record_that_holds_the_unique_value",
    "tests/integration/writer/test_writer_errors.py::test_502_halves_the_batch_down_to_what_hubspot_takes",
    "tests/integration/writer/test_writer_errors.py::test_504_on_a_single_record_dead_letters_it",
    "tests/integration/writer/test_writer_errors.py::test_circuit_opens_on_an_outage_and_closes_after_a_probe",
    "tests/integration/writer/test_writer_errors.py::test_daily_limit_fails_with_resource_exhausted_and_queued_writes_wait",
    "tests/integration/writer/test_writer_errors.py::test_dead_letters_replay_and_purge",
    "tests/integration/writer/test_writer_errors.py::test_transient_answers_are_retried_with_backoff",
    "tests/integration/writer/test_writer_export.py::test_export_of_25000_contacts_returns_each_once_while_writes_land",
    "tests/integration/writer/test_writer_export.py::test_export_resumes_from_a_checkpoint",
    "tests/integration/writer/test_writer_features.py::test_companies_then_contacts_then_deals_then_associations",
    "tests/integration/writer/test_writer_features.py::test_pilot_mode_logs_and_sends_nothing",
    "tests/integration/writer/test_writer_features.py::test_unchanged_upserts_are_not_sent_again",
    "tests/integration/writer/test_writer_metrics.py::test_requests_dead_letters_and_headroom_are_exported",
    "tests/integration/writer/test_writer_objects.py::test_archive_by_unique_value_and_gdpr_delete_are_in_the_request_log",
    "tests/integration/writer/test_writer_objects.py::test_custom_object_by_name_read_search_and_quotes_read_only",
    "tests/integration/writer/test_writer_objects.py::test_custom_object_export_past_the_search_cap",
    "tests/integration/writer/test_writer_objects.py::test_line_items_with_deals_and_products_in_one_push_follow_the_graph",
    "tests/integration/writer/test_writer_objects.py::test_tickets_notes_and_a_labelled_association_created_and_removed",
    "tests/integration/writer/test_writer_order.py::test_a_callers_older_version_writes_only_what_no_newer_one_wrote",
    "tests/integration/writer/test_writer_order.py::test_a_newer_write_waits_for_the_call_still_carrying_the_older_one",
    "tests/integration/writer/test_writer_order.py::test_a_reclaimed_write_does_not_revert_a_newer_one",
    "tests/integration/writer/test_writer_reads.py::test_a_failed_read_stops_sending_the_rest_of_its_chunks",
    "tests/integration/writer/test_writer_reads.py::test_a_full_redis_pool_makes_commands_wait_instead_of_failing",
    "tests/integration/writer/test_writer_reads.py::test_a_hung_read_is_cut_and_retried_within_the_callers_deadline",
    "tests/integration/writer/test_writer_reads.py::test_one_read_of_20000_ids_and_8_concurrent_reads_of_3000_succeed",
    "tests/integration/writer/test_writer_search.py::test_search_pages_and_never_exceeds_five_per_second",
    "tests/integration/writer/test_writer_search.py::test_search_refuses_too_many_filters",
    "tests/integration/writer/test_writer_slice.py::test_bad_input_is_invalid_argument_with_details",
    "tests/integration/writer/test_writer_slice.py::test_list_properties",
    "tests/integration/writer/test_writer_slice.py::test_read_records_by_id_and_unique_value_in_chunks",
    "tests/integration/writer/test_writer_slice.py::test_upserts_coalesce_into_batches_and_answer_per_record",
    "tests/integration/writer/test_writer_tracing.py::test_a_batched_call_links_to_each_callers_trace",
    "tests/unit/auth/test_startup.py::test_production_without_key_ring_exits_2_naming_the_variable",
    "tests/unit/mapper/test_transforms.py::test_invertible_fields_round_trip",
    "tests/unit/sandbox/test_sandbox_store_props.py::test_unique_indexes_stay_exact",
    "tests/unit/test_security.py::test_policy_table_is_the_code",
    "tests/unit/test_tokens_split.py::test_each_component_file_holds_its_own_token_and_digests_of_the_others",
    "tests/unit/test_transport_settings.py::test_production_service_refuses_plaintext_transport",
    "tests/unit/writer/test_ratelimit.py::test_no_window_holds_more_than_the_limit",
)


def _is_slow(nodeid: str) -> bool:
    path, _, rest = nodeid.partition("::")
    name = rest.split("[", 1)[0]
    return any(entry in (path, f"{path}::{name}") for entry in SLOW)


def mark_item(item: pytest.Item) -> None:
    """Add ``e2e`` to tests under tests/e2e and ``slow`` to those in :data:`SLOW`."""
    if item.path.is_relative_to(E2E):
        item.add_marker(pytest.mark.e2e)
    if _is_slow(item.nodeid):
        item.add_marker(pytest.mark.slow)
