//! Every word the portal shows, in English and Japanese: one catalogue per language, as a
//! struct, so a string missing from either does not compile. The language comes from the
//! `postern_lang` cookie (set by the switch on every page) or Accept-Language.

/// One language's catalogue.
#[derive(Debug)]
pub struct Messages {
    /// The `lang` attribute and cookie value.
    pub lang: &'static str,
    pub title: &'static str,
    pub switch_to: &'static str,
    pub switch_lang: &'static str,
    pub sign_in: &'static str,
    pub sign_in_intro: &'static str,
    pub login: &'static str,
    pub password: &'static str,
    pub sign_in_refused: &'static str,
    pub try_later: &'static str,
    pub sign_in_again: &'static str,
    pub sign_out: &'static str,
    pub mfa_title: &'static str,
    pub mfa_setup_intro: &'static str,
    pub mfa_setup_steps: &'static str,
    pub mfa_secret_label: &'static str,
    pub mfa_verify_intro: &'static str,
    pub code: &'static str,
    pub verify: &'static str,
    pub code_refused: &'static str,
    pub recovery_title: &'static str,
    pub recovery_intro: &'static str,
    pub continue_label: &'static str,
    pub app_passwords: &'static str,
    pub app_passwords_intro: &'static str,
    pub none_yet: &'static str,
    pub name: &'static str,
    pub scopes: &'static str,
    pub created: &'static str,
    pub last_used: &'static str,
    pub never: &'static str,
    pub expires: &'static str,
    pub no_expiry: &'static str,
    pub revoked: &'static str,
    pub expired: &'static str,
    pub revoke: &'static str,
    pub revoke_all: &'static str,
    pub create_title: &'static str,
    pub name_placeholder: &'static str,
    pub expires_in: &'static str,
    pub create: &'static str,
    pub new_password_title: &'static str,
    pub new_password_warning: &'static str,
    pub copy: &'static str,
    pub copied: &'static str,
    pub device_settings: &'static str,
    pub server_imap: &'static str,
    pub server_smtp: &'static str,
    pub user_name: &'static str,
    pub done: &'static str,
    pub profile_title: &'static str,
    pub profile_intro: &'static str,
    pub profile_download: &'static str,
    pub link_spent: &'static str,
    pub notify_created_subject: &'static str,
    pub notify_created: &'static str,
    pub notify_mfa_subject: &'static str,
    pub notify_mfa: &'static str,
    pub notify_what: &'static str,
    pub notify_when: &'static str,
    pub notify_where: &'static str,
    pub notify_advice: &'static str,
    pub mfa_totp_added: &'static str,
    pub name_required: &'static str,
    pub scope_required: &'static str,
    pub bad_expiry: &'static str,
    pub limit_reached: &'static str,
    pub forbidden: &'static str,
    pub not_found: &'static str,
    pub error: &'static str,
}

pub static EN: Messages = Messages {
    lang: "en",
    title: "App passwords",
    switch_to: "ja",
    switch_lang: "日本語",
    sign_in: "Sign in",
    sign_in_intro: "Sign in with your email account and its password to manage the app passwords of your mail apps.",
    login: "Email address",
    password: "Password",
    sign_in_refused: "The email address or password is not right.",
    try_later: "Signing in is not possible right now. Try again in a few minutes.",
    sign_in_again: "For your security, sign in again to create an app password.",
    sign_out: "Sign out",
    mfa_title: "Two-step verification",
    mfa_setup_intro: "Set it up now: your account needs a second step when you sign in here.",
    mfa_setup_steps: "Open an authenticator app (Microsoft Authenticator, Google Authenticator, 1Password, …), scan this code or type the key, then enter the 6-digit code the app shows.",
    mfa_secret_label: "Key",
    mfa_verify_intro: "Enter the 6-digit code from your authenticator app, or one of your recovery codes.",
    code: "Code",
    verify: "Verify",
    code_refused: "That code is not right, or was already used. Try the next one.",
    recovery_title: "Your recovery codes",
    recovery_intro: "Keep these codes somewhere safe. Each one signs you in once if you lose your phone. They will not be shown again.",
    continue_label: "Continue",
    app_passwords: "App passwords",
    app_passwords_intro: "Mail apps that cannot do two-step verification (Outlook, Apple Mail, phones, printers) sign in with an app password instead of your password. Create one for each device; revoke it when the device is gone.",
    none_yet: "You have no app passwords yet.",
    name: "Name",
    scopes: "Use for",
    created: "Created",
    last_used: "Last used",
    never: "never",
    expires: "Expires",
    no_expiry: "never",
    revoked: "revoked",
    expired: "expired",
    revoke: "Revoke",
    revoke_all: "Revoke all",
    create_title: "Create an app password",
    name_placeholder: "Outlook on the office PC",
    expires_in: "Expires after",
    create: "Create",
    new_password_title: "Your new app password",
    new_password_warning: "Copy it into your mail app now. It will not be shown again.",
    copy: "Copy",
    copied: "Copied",
    device_settings: "Settings for your mail app",
    server_imap: "Incoming mail (IMAP, SSL/TLS)",
    server_smtp: "Outgoing mail (SMTP, SSL/TLS)",
    user_name: "User name",
    done: "Done",
    profile_title: "iPhone, iPad or Mac",
    profile_intro: "Scan this code with the camera of your iPhone or iPad, or open the link on your Mac, then install the profile in Settings. The link works once, within 10 minutes.",
    profile_download: "Download the profile",
    link_spent: "This link was already used or has expired. Create a new app password to get a new one.",
    notify_created_subject: "A new app password for your account",
    notify_created: "An app password was created for your email account.",
    notify_mfa_subject: "Two-step verification changed for your account",
    notify_mfa: "The two-step verification of your email account changed.",
    notify_what: "What",
    notify_when: "When",
    notify_where: "From",
    notify_advice: "If this was you, there is nothing to do. If it was not, sign in at the address below, revoke what you do not recognise, and change your password.",
    mfa_totp_added: "Authenticator app set up",
    name_required: "Give the app password a name, such as the device it is for.",
    scope_required: "Choose at least one use.",
    bad_expiry: "Choose an expiry from the list.",
    limit_reached: "You have as many app passwords as allowed. Revoke one you no longer use first.",
    forbidden: "This form has expired. Go back, reload the page and try again.",
    not_found: "There is no such page.",
    error: "Something went wrong. Try again in a few minutes.",
};

pub static JA: Messages = Messages {
    lang: "ja",
    title: "アプリパスワード",
    switch_to: "en",
    switch_lang: "English",
    sign_in: "サインイン",
    sign_in_intro: "メールアプリのアプリパスワードを管理するには、メールアカウントとそのパスワードでサインインしてください。",
    login: "メールアドレス",
    password: "パスワード",
    sign_in_refused: "メールアドレスまたはパスワードが正しくありません。",
    try_later: "現在サインインできません。数分後にもう一度お試しください。",
    sign_in_again: "セキュリティのため、アプリパスワードを作成するにはもう一度サインインしてください。",
    sign_out: "サインアウト",
    mfa_title: "2 段階認証",
    mfa_setup_intro: "今すぐ設定してください。ここにサインインするには 2 段階目の確認が必要です。",
    mfa_setup_steps: "認証アプリ（Microsoft Authenticator、Google 認証システム、1Password など）を開き、このコードを読み取るかキーを入力して、アプリに表示された 6 桁のコードを入力してください。",
    mfa_secret_label: "キー",
    mfa_verify_intro: "認証アプリに表示された 6 桁のコード、または回復コードを入力してください。",
    code: "コード",
    verify: "確認",
    code_refused: "コードが正しくないか、すでに使用されています。次のコードをお試しください。",
    recovery_title: "回復コード",
    recovery_intro: "これらのコードは安全な場所に保管してください。スマートフォンをなくしたとき、それぞれ 1 回だけサインインに使えます。再表示はされません。",
    continue_label: "続行",
    app_passwords: "アプリパスワード",
    app_passwords_intro: "2 段階認証に対応していないメールアプリ（Outlook、Apple メール、スマートフォン、プリンターなど）は、パスワードの代わりにアプリパスワードでサインインします。デバイスごとに作成し、使わなくなったら取り消してください。",
    none_yet: "アプリパスワードはまだありません。",
    name: "名前",
    scopes: "用途",
    created: "作成日時",
    last_used: "最終使用",
    never: "なし",
    expires: "有効期限",
    no_expiry: "なし",
    revoked: "取り消し済み",
    expired: "期限切れ",
    revoke: "取り消す",
    revoke_all: "すべて取り消す",
    create_title: "アプリパスワードを作成",
    name_placeholder: "会社の PC の Outlook",
    expires_in: "有効期間",
    create: "作成",
    new_password_title: "新しいアプリパスワード",
    new_password_warning: "今すぐメールアプリにコピーしてください。再表示はされません。",
    copy: "コピー",
    copied: "コピーしました",
    device_settings: "メールアプリの設定",
    server_imap: "受信メール（IMAP、SSL/TLS）",
    server_smtp: "送信メール（SMTP、SSL/TLS）",
    user_name: "ユーザー名",
    done: "完了",
    profile_title: "iPhone、iPad、Mac",
    profile_intro: "iPhone や iPad のカメラでこのコードを読み取るか、Mac でリンクを開き、設定アプリでプロファイルをインストールしてください。リンクは 10 分以内に 1 回だけ使えます。",
    profile_download: "プロファイルをダウンロード",
    link_spent: "このリンクは使用済みか期限切れです。新しいアプリパスワードを作成すると、新しいリンクが表示されます。",
    notify_created_subject: "アカウントに新しいアプリパスワードが作成されました",
    notify_created: "あなたのメールアカウントにアプリパスワードが作成されました。",
    notify_mfa_subject: "アカウントの 2 段階認証が変更されました",
    notify_mfa: "あなたのメールアカウントの 2 段階認証が変更されました。",
    notify_what: "内容",
    notify_when: "日時",
    notify_where: "操作元",
    notify_advice: "心当たりがあれば、何もする必要はありません。心当たりがない場合は、下のアドレスでサインインし、覚えのないものを取り消して、パスワードを変更してください。",
    mfa_totp_added: "認証アプリを設定",
    name_required: "使うデバイスなど、アプリパスワードの名前を入力してください。",
    scope_required: "用途を 1 つ以上選んでください。",
    bad_expiry: "有効期間を一覧から選んでください。",
    limit_reached: "アプリパスワードの上限に達しています。使わなくなったものを先に取り消してください。",
    forbidden: "このフォームは期限切れです。戻ってページを再読み込みし、もう一度お試しください。",
    not_found: "このページはありません。",
    error: "問題が発生しました。数分後にもう一度お試しください。",
};

/// The catalogue for a request: the cookie's choice, else the best of Accept-Language,
/// else English.
pub fn negotiate(cookie: Option<&str>, accept_language: Option<&str>) -> &'static Messages {
    match cookie {
        Some("ja") => return &JA,
        Some("en") => return &EN,
        _ => {}
    }
    let mut best: (&'static Messages, f32) = (&EN, 0.0);
    for item in accept_language.unwrap_or("").split(',') {
        let mut parts = item.split(';');
        let tag = parts.next().unwrap_or("").trim();
        let quality = parts
            .find_map(|p| p.trim().strip_prefix("q="))
            .and_then(|q| q.parse().ok())
            .unwrap_or(1.0);
        let primary = tag.split('-').next().unwrap_or("").to_ascii_lowercase();
        let messages = match primary.as_str() {
            "ja" => &JA,
            "en" => &EN,
            _ => continue,
        };
        if quality > best.1 {
            best = (messages, quality);
        }
    }
    best.0
}

/// The catalogue named by a language code, if it is one of ours.
pub fn named(lang: &str) -> Option<&'static Messages> {
    match lang {
        "en" => Some(&EN),
        "ja" => Some(&JA),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_wins_then_the_best_accepted_language() {
        assert_eq!(negotiate(Some("ja"), Some("en")).lang, "ja");
        assert_eq!(negotiate(None, Some("ja-JP,ja;q=0.9,en;q=0.8")).lang, "ja");
        assert_eq!(
            negotiate(None, Some("fr-FR, en;q=0.5, ja;q=0.4")).lang,
            "en"
        );
        assert_eq!(negotiate(None, Some("de")).lang, "en");
        assert_eq!(negotiate(Some("xx"), None).lang, "en");
    }
}
