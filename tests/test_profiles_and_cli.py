"""A family linked across channels shares one profile; the Telegram webhook is registered by a command."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from jisr.simulators import telegram as telegram_sim
from jisr.simulators.server import BackgroundServer
from jisr.store.contacts import ContactStore, create_db_engine

ROOT = Path(__file__).resolve().parents[1]


def test_linked_channels_share_the_profile(stack):
    whatsapp, telegram_chat = "whatsapp:+32470000001", 55500001
    httpx.post(
        f"{stack['twilio']}/_sim/inbound",
        json={"webhook_url": f"{stack['gateway']}/webhooks/whatsapp", "from": whatsapp, "body": "bonjour, on habite en Belgique, mon fils est en 6e primaire"},
        timeout=60,
    )
    store = ContactStore(create_db_engine(stack["database_url"]))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (store.by_address(whatsapp) and store.by_address(whatsapp).country):
        time.sleep(0.2)
    assert store.by_address(whatsapp).country == "BE"
    telegram_contact = store.get_or_create(f"telegram:{telegram_chat}", "telegram")
    store.link([store.by_address(whatsapp).id, telegram_contact.id])

    httpx.post(
        f"{stack['telegram']}/_sim/inbound",
        json={"webhook_url": f"{stack['gateway']}/webhooks/telegram", "secret_token": stack["telegram_secret"], "chat_id": telegram_chat, "text": "c'est quand le CEB ?"},
        timeout=60,
    )
    deadline, sent = time.monotonic() + 30, []
    while time.monotonic() < deadline and not sent:
        sent = [r for r in httpx.get(f"{stack['telegram']}/_sim/requests").json()["requests"] if str(telegram_chat) in str(r)]
        time.sleep(0.2)
    text = str(sent)
    assert "CEB" in text, "answered for Belgium, known from the WhatsApp conversation, without asking the country"
    store.engine.dispose()


def test_contacts_link_command(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    store = ContactStore(create_db_engine(url))
    a = store.get_or_create("whatsapp:+33611111111", "whatsapp")
    b = store.get_or_create("messenger:123456", "messenger")
    env = {**os.environ, "DATABASE_URL": url}
    done = subprocess.run([sys.executable, "-m", "jisr.cli", "contacts", "link", a.address, b.address], env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert store.get(a.id).profile_id == store.get(b.id).profile_id == min(a.id, b.id)
    missing = subprocess.run([sys.executable, "-m", "jisr.cli", "contacts", "link", a.address, "telegram:999"], env=env, cwd=ROOT, capture_output=True, text=True)
    assert missing.returncode == 2 and "999" not in missing.stderr and "number 2" in missing.stderr


def test_telegram_webhook_command_registers_the_url_and_secret():
    with BackgroundServer(telegram_sim.create_app(token="42:abc")) as sim:
        env = {
            **os.environ,
            "JISR_TELEGRAM_API_BASE": sim,
            "JISR_TELEGRAM_BOT_TOKEN": "42:abc",
            "JISR_TELEGRAM_SECRET_TOKEN": "s3cret-token",
            "JISR_PUBLIC_URL": "https://jisr.example.org",
        }
        done = subprocess.run([sys.executable, "-m", "jisr.cli", "telegram", "webhook"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        calls = [r for r in httpx.get(f"{sim}/_sim/requests").json()["requests"] if "setWebhook" in str(r)]
        assert calls and "https://jisr.example.org/webhooks/telegram" in str(calls[-1]) and "s3cret-token" in str(calls[-1])
