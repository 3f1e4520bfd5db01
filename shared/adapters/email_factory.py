"""Chooses the email backend from the app settings: ACS, else SMTP, else a local outbox folder.

The outbox as the last resort means an app with nothing configured still "sends" (into files a
developer can open) instead of failing every notification. The choice is logged once, with where
mail goes but never a password, key or connection string.
"""

from __future__ import annotations

import logging

from shared.adapters.email_acs import AcsNotifier
from shared.adapters.email_outbox import OutboxNotifier
from shared.adapters.email_smtp import SmtpNotifier
from shared.services.ports import Notifier
from shared.settings import Settings

log = logging.getLogger(__name__)


def notifier_from_settings(settings: Settings) -> Notifier:
    if settings.acs_connection_string or settings.acs_endpoint:
        acs = AcsNotifier(
            settings.acs_sender_address or settings.smtp_from,
            connection_string=(settings.acs_connection_string.get_secret_value()
                               if settings.acs_connection_string else None),
            endpoint=None if settings.acs_connection_string else settings.acs_endpoint,
            managed_identity_client_id=settings.azure_client_id,
            ca_bundle=settings.ca_bundle,
        )
        log.info("email: Azure Communication Services at %s (%s), sender %s", acs.endpoint, acs.auth, acs.sender)
        return acs
    if settings.smtp_host:
        smtp = SmtpNotifier(
            settings.smtp_host, settings.smtp_port, settings.smtp_from,
            mode=settings.smtp_use_tls,
            user=settings.smtp_user,
            password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
            verify=settings.smtp_verify_tls,
            ca_bundle=settings.ca_bundle,
            timeout=settings.smtp_timeout_seconds,
        )
        log.info("email: SMTP %s:%d (%s%s), sender %s", smtp.host, smtp.port, smtp.mode,
                 f", user {smtp.user}" if smtp.user else "", smtp.sender)
        return smtp
    outbox = OutboxNotifier(settings.email_outbox_dir, settings.smtp_from)
    log.warning("email: neither ACS_* nor SMTP_HOST is set; messages are written to %s, not sent",
                outbox.folder.resolve())
    return outbox
