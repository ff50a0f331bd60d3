"""A person at the portal, in a real browser: Debian's chromium, headless, driven through
chromedriver by selenium (tests/portal.rs runs this).

Usage:
    browser.py BASE_URL LOGIN PASSWORD SCREENSHOT_DIR
    browser.py BASE_URL LOGIN PASSWORD SCREENSHOT_DIR revoke RECOVERY_CODE
    browser.py BASE_URL LOGIN PASSWORD SCREENSHOT_DIR passkeys
    browser.py BASE_URL LOGIN PASSWORD SCREENSHOT_DIR directory
    browser.py BASE_URL LOGIN PASSWORD SCREENSHOT_DIR oidc

Signs in with the primary password, sets up TOTP from the key shown in #totp-secret
(the code computed here, RFC 6238), keeps the recovery codes, creates an app password,
presses Copy and reads the clipboard, looks at the pages on a phone-sized window and in
Japanese, signs out, signs in again: the TOTP code already used is refused, a recovery
code is accepted. Screenshots of every page go to SCREENSHOT_DIR.

With "revoke", signs in with a recovery code and revokes the first app password listed.

With "passkeys", a user without a second factor sets up a passkey instead of TOTP (on
Chromium's virtual authenticator, WebDriver's virtual authenticator commands), adds a
second one from another authenticator on the sign-in methods page, signs out and in again
with it, removes the first, and is refused removing the last.

Prints one JSON object on stdout: the app password as shown and as copied, the recovery
codes, the texts checked. Any failure is an exception: non-zero exit, traceback on stderr.
"""

import base64
import hashlib
import hmac
import json
import os
import struct
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.virtual_authenticator import (
    Protocol, Transport, VirtualAuthenticatorOptions)
from selenium.webdriver.support.ui import WebDriverWait


def totp(secret_b32, at=None, step=30, digits=6):
    """RFC 6238 with SHA-1, as authenticator apps compute it."""
    key = base64.b32decode(secret_b32 + "=" * (-len(secret_b32) % 8), casefold=True)
    counter = int((time.time() if at is None else at) // step)
    mac = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset:offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10 ** digits).zfill(digits)


def go(driver, element_id):
    """Clicks what leads to another page and waits until that page has replaced this one
    (a click returns before the browser has navigated)."""
    old = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.ID, element_id).click()
    WebDriverWait(driver, 15).until(lambda d: gone(old))
    WebDriverWait(driver, 15).until(
        lambda d: d.execute_script("return document.readyState") == "complete")


def gone(element):
    """Whether element's page has been replaced. chromedriver says so with a stale
    reference, or, caught mid-navigation, with an inspector error about the node."""
    try:
        element.is_enabled()
        return False
    except (StaleElementReferenceException, WebDriverException):
        return True


def browser(language):
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 # The test CA is not in the system's store; the certificate itself is
                 # tested elsewhere.
                 "--ignore-certificate-errors", f"--lang={language}"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"intl.accept_languages": language})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_window_size(1280, 900)
    return driver


def revoke(base, login, password, shots, recovery_code):
    """Signs in with a recovery code, revokes the first app password, and says what the
    list shows afterwards."""
    driver = browser("en-US")
    try:
        driver.get(base + "/")
        driver.find_element(By.ID, "login").send_keys(login)
        driver.find_element(By.ID, "password").send_keys(password)
        go(driver, "sign-in")
        driver.find_element(By.ID, "code").send_keys(recovery_code)
        go(driver, "verify")
        assert driver.current_url.endswith("/app-passwords"), driver.current_url
        old = driver.find_element(By.TAG_NAME, "html")
        driver.find_element(By.CSS_SELECTOR, "#app-passwords form button").click()
        WebDriverWait(driver, 15).until(lambda d: gone(old))
        listed = driver.find_element(By.CSS_SELECTOR, "#app-passwords").text
        driver.save_screenshot(os.path.join(shots, "13-revoked.png"))
    finally:
        driver.quit()
    print(json.dumps({"listed_after": listed}))


def texts(driver, css):
    """The text of every element matching css, read in one go once there are any (a
    page just navigated to may still be settling)."""
    return WebDriverWait(driver, 15).until(lambda d: d.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]))"
        ".map(e => e.textContent.trim())", css) or False)


def authenticator(driver):
    """A platform authenticator that verifies its user (a fingerprint, say) at once."""
    options = VirtualAuthenticatorOptions()
    options.protocol = Protocol.CTAP2
    options.transport = Transport.INTERNAL
    options.has_resident_key = True
    options.has_user_verification = True
    options.is_user_verified = True
    options.is_user_consenting = True
    driver.add_virtual_authenticator(options)


def passkeys(base, login, password, shots):
    """Set-up with a passkey, a second one, sign-in with it, removal, the last kept."""
    result = {}
    driver = browser("en-US")

    def shot(name):
        driver.save_screenshot(os.path.join(shots, name + ".png"))

    def text(css):
        return driver.find_element(By.CSS_SELECTOR, css).text

    def sign_in():
        driver.find_element(By.ID, "login").send_keys(login)
        driver.find_element(By.ID, "password").send_keys(password)
        go(driver, "sign-in")
        assert driver.current_url.endswith("/mfa"), driver.current_url

    try:
        authenticator(driver)
        driver.get(base + "/")
        sign_in()
        WebDriverWait(driver, 10).until(
            lambda d: d.find_element(By.ID, "passkey-register").is_displayed())
        shot("20-mfa-setup-with-passkey")
        go(driver, "passkey-register")
        codes = texts(driver, "#recovery-codes li")
        assert len(codes) == 10, codes
        result["recovery_codes"] = codes
        go(driver, "continue")
        assert driver.current_url.endswith("/app-passwords"), driver.current_url
        go(driver, "nav-security")
        result["first_listed"] = text("#passkeys")
        result["totp_state"] = text("#totp-state")

        # A second passkey, on another authenticator (a security key, say).
        driver.remove_virtual_authenticator()
        authenticator(driver)
        name = driver.find_element(By.ID, "passkey-name")
        name.clear()
        name.send_keys("Security key")
        WebDriverWait(driver, 10).until(
            lambda d: d.find_element(By.ID, "passkey-register").is_displayed())
        go(driver, "passkey-register")
        assert driver.current_url.endswith("/security"), driver.current_url
        result["both_listed"] = text("#passkeys")
        shot("21-security")

        # Signed in again with the second one.
        go(driver, "sign-out")
        sign_in()
        result["verify_intro"] = driver.find_element(By.CSS_SELECTOR, "p.space").text
        WebDriverWait(driver, 10).until(
            lambda d: d.find_element(By.ID, "passkey-sign-in").is_displayed())
        shot("22-mfa-verify-passkey")
        go(driver, "passkey-sign-in")
        assert driver.current_url.endswith("/app-passwords"), driver.current_url
        result["after_passkey"] = text("h1")

        # The first one removed; the last one stays.
        go(driver, "nav-security")
        old = driver.find_element(By.TAG_NAME, "html")
        driver.find_element(By.CSS_SELECTOR, "#passkeys tbody tr form button").click()
        WebDriverWait(driver, 15).until(lambda d: gone(old))
        result["one_left"] = text("#passkeys")
        old = driver.find_element(By.TAG_NAME, "html")
        driver.find_element(By.CSS_SELECTOR, "#passkeys tbody tr form button").click()
        WebDriverWait(driver, 15).until(lambda d: gone(old))
        result["last_kept"] = text("#error")
        result["still_listed"] = text("#passkeys")
        shot("23-security-last-method")
        # The switch on a page that answered a form goes home, in the new language.
        go(driver, "lang")
        result["home_after_switch"] = text("h1")
        go(driver, "lang")
        driver.set_window_size(390, 844)
        driver.get(base + "/security")
        go(driver, "lang")
        result["japanese_title"] = text("h1")
        shot("24-phone-security-ja")
    except Exception:
        print(driver.current_url, file=sys.stderr)
        print(driver.find_element(By.TAG_NAME, "body").text, file=sys.stderr)
        shot("failure")
        raise
    finally:
        driver.quit()
    print(json.dumps(result))


def directory(base, login, password, shots, oidc):
    """Signs in with a directory password (the portal's form), or through the OpenID
    provider's own login page (oidc); says where it landed."""
    result = {}
    driver = browser("en-US")
    try:
        driver.get(base + "/")
        if oidc:
            driver.save_screenshot(os.path.join(shots, "30-sign-in-oidc.png"))
            go(driver, "sign-in-oidc")
            result["provider_page"] = driver.current_url
            driver.save_screenshot(os.path.join(shots, "31-provider-login.png"))
            driver.find_element(By.NAME, "login").send_keys(login)
            driver.find_element(By.NAME, "password").send_keys(password)
            old = driver.find_element(By.TAG_NAME, "html")
            driver.find_element(By.CSS_SELECTOR, "form button, form [type=submit]").click()
            WebDriverWait(driver, 15).until(lambda d: gone(old))
            WebDriverWait(driver, 15).until(lambda d: d.current_url.startswith(base))
            WebDriverWait(driver, 15).until(
                lambda d: d.execute_script("return document.readyState") == "complete")
        else:
            driver.find_element(By.ID, "login").send_keys(login)
            driver.find_element(By.ID, "password").send_keys(password)
            go(driver, "sign-in")
        result["landed"] = driver.current_url[len(base):]
        result["title"] = driver.find_element(By.TAG_NAME, "h1").text
        driver.save_screenshot(os.path.join(
            shots, "32-after-oidc.png" if oidc else "33-after-ldap.png"))
    except Exception:
        print(driver.current_url, file=sys.stderr)
        print(driver.find_element(By.TAG_NAME, "body").text, file=sys.stderr)
        driver.save_screenshot(os.path.join(shots, "failure.png"))
        raise
    finally:
        driver.quit()
    print(json.dumps(result))


def main():
    base, login, password, shots = sys.argv[1:5]
    os.makedirs(shots, exist_ok=True)
    if sys.argv[5:6] == ["revoke"]:
        return revoke(base, login, password, shots, sys.argv[6])
    if sys.argv[5:6] == ["passkeys"]:
        return passkeys(base, login, password, shots)
    if sys.argv[5:6] in (["directory"], ["oidc"]):
        return directory(base, login, password, shots, sys.argv[5] == "oidc")
    result = {}
    driver = browser("en-US")

    def shot(name):
        driver.save_screenshot(os.path.join(shots, name + ".png"))

    def text(css):
        return driver.find_element(By.CSS_SELECTOR, css).text

    try:
        driver.get(base + "/")
        assert driver.find_element(By.CSS_SELECTOR, "html").get_attribute("lang") == "en"
        shot("01-sign-in")
        driver.find_element(By.ID, "login").send_keys(login)
        driver.find_element(By.ID, "password").send_keys("not the password")
        go(driver, "sign-in")
        result["wrong_password"] = text("#error")
        shot("02-sign-in-refused")

        driver.find_element(By.ID, "password").send_keys(password)
        go(driver, "sign-in")
        assert driver.current_url.endswith("/mfa"), driver.current_url
        secret = text("#totp-secret")
        result["totp_secret"] = secret
        assert len(driver.find_elements(By.CSS_SELECTOR, ".qr svg")) == 1, "no QR code"
        shot("03-mfa-setup")
        code = totp(secret)
        driver.find_element(By.ID, "code").send_keys(code)
        go(driver, "verify")
        codes = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#recovery-codes li")]
        assert len(codes) == 10, codes
        result["recovery_codes"] = codes
        shot("04-recovery-codes")
        go(driver, "continue")
        assert driver.current_url.endswith("/app-passwords"), driver.current_url
        result["empty_list"] = text("#none")
        shot("05-app-passwords-empty")

        driver.find_element(By.ID, "name").send_keys("Outlook on the office PC")
        go(driver, "create")
        shown = text("#new-app-password")
        result["shown"] = shown
        driver.execute_cdp_cmd("Browser.grantPermissions", {
            "origin": base, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})
        copy = driver.find_element(By.ID, "copy")
        copy.click()
        # The button says so once the clipboard has taken the password.
        WebDriverWait(driver, 10).until(lambda d: copy.text != "Copy")
        result["copy_button_after"] = text("#copy")
        result["copied"] = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "navigator.clipboard.readText().then(done, e => done('error: ' + e));")
        result["listed"] = text("#app-passwords")
        shot("06-new-app-password")

        driver.set_window_size(390, 844)
        shot("07-phone-new-app-password")
        driver.get(base + "/app-passwords")
        shot("08-phone-app-passwords")
        go(driver, "lang")
        assert driver.find_element(By.CSS_SELECTOR, "html").get_attribute("lang") == "ja"
        result["japanese_title"] = text("h1")
        shot("09-phone-app-passwords-ja")
        driver.set_window_size(1280, 900)
        shot("10-app-passwords-ja")

        # Reusing the TOTP code of a minute ago is refused; a recovery code works once.
        go(driver, "sign-out")
        shot("11-signed-out-ja")
        driver.find_element(By.ID, "login").send_keys(login)
        driver.find_element(By.ID, "password").send_keys(password)
        go(driver, "sign-in")
        assert driver.current_url.endswith("/mfa"), driver.current_url
        assert not driver.find_elements(By.ID, "totp-secret"), "set-up shown again"
        shot("12-mfa-verify-ja")
        driver.find_element(By.ID, "code").send_keys(code)
        go(driver, "verify")
        result["replayed_code"] = text("#error")
        driver.find_element(By.ID, "code").send_keys(codes[0])
        go(driver, "verify")
        assert driver.current_url.endswith("/app-passwords"), driver.current_url
        result["after_recovery_code"] = text("h1")

        # A recovery code works once.
        go(driver, "sign-out")
        driver.find_element(By.ID, "login").send_keys(login)
        driver.find_element(By.ID, "password").send_keys(password)
        go(driver, "sign-in")
        driver.find_element(By.ID, "code").send_keys(codes[0])
        go(driver, "verify")
        result["reused_recovery_code"] = text("#error")
    except Exception:
        # What the browser showed when it failed, for the test's message.
        print(driver.current_url, file=sys.stderr)
        print(driver.find_element(By.TAG_NAME, "body").text, file=sys.stderr)
        shot("failure")
        raise
    finally:
        driver.quit()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
