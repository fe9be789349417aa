//! The Teams app package: the manifest rendered from `manifests/bot.manifest.json` for one configured
//! bot, two generated icons, zipped per tenant into `teams-app/build/<tenant>.zip`.
//!
//! Everything is validated before anything is written; an error names the field and the fix.
//! The icons are drawn in code and encoded with the `png` crate; the packager reads its own pixels back
//! to check sizes and the outline icon's transparency.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::BotConfig;
use crate::ids::Cloud;

/// The bot app manifest template (schema v1.29) with `{{PLACEHOLDER}}`s.
pub const BOT_MANIFEST_TEMPLATE: &str = include_str!("../manifests/bot.manifest.json");

/// Side of the color icon, in pixels.
pub const COLOR_SIZE: u32 = 192;
/// Side of the outline icon, in pixels.
pub const OUTLINE_SIZE: u32 = 32;

/// The zip entries of a package, in order.
pub const PACKAGE_ENTRIES: [&str; 3] = ["manifest.json", "color.png", "outline.png"];

/// A packaging problem, with the field (or flag) it is about and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageError {
    pub field: String,
    pub problem: String,
}

impl PackageError {
    fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self { field: field.into(), problem: problem.into() }
    }
}

impl fmt::Display for PackageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "teams app package: `{}` {}", self.field, self.problem)
    }
}

impl std::error::Error for PackageError {}

/// The values of the manifest that are not in the bot's configuration (CLI flags).
#[derive(Debug, Clone)]
pub struct AppInfo {
    /// Short app name (≤ 30 characters); `None` uses the bot's `display_name`.
    pub name: Option<String>,
    pub short_description: String,
    pub full_description: String,
    pub developer: String,
    /// Default: `https://<domain>/`.
    pub website: Option<String>,
    /// Default: the website.
    pub privacy_url: Option<String>,
    /// Default: the website.
    pub terms_url: Option<String>,
    /// The app package version (MAJOR.MINOR.PATCH); bump it for every upload.
    pub version: String,
    /// The public host name of the messaging endpoint (no scheme, no path).
    pub domain: Option<String>,
    pub accent_color: String,
}

impl Default for AppInfo {
    fn default() -> Self {
        Self {
            name: None,
            short_description: DEFAULT_SHORT_DESCRIPTION.into(),
            full_description: DEFAULT_FULL_DESCRIPTION.into(),
            developer: "agentgate".into(),
            website: None,
            privacy_url: None,
            terms_url: None,
            version: "1.0.0".into(),
            domain: None,
            accent_color: "#4F6BED".into(),
        }
    }
}

pub const DEFAULT_SHORT_DESCRIPTION: &str = "An AI agent you can chat with in Teams.";
pub const DEFAULT_FULL_DESCRIPTION: &str = "An AI agent with its own seat in Microsoft Teams. Message it in a 1:1 chat, \
add it to a group chat or a team channel and @mention it; it answers in the conversation.";

pub use crate::ids::is_guid;

/// MAJOR.MINOR.PATCH with numbers only (the manifest schema's semver: no pre-release or build part), each
/// at most 9 digits.
pub fn is_semver(s: &str) -> bool {
    semver::Version::parse(s)
        .is_ok_and(|v| v.pre.is_empty() && v.build.is_empty() && [v.major, v.minor, v.patch].iter().all(|n| *n < 1_000_000_000))
}

/// A DNS host name such as `bot.contoso.com` (no scheme, port, path or wildcard).
pub fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.contains('.')
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        })
}

/// A name usable as a file name: `[A-Za-z0-9._-]`, not starting with a dot.
pub fn is_package_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && !s.starts_with('.')
        && s.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

fn check_https(field: &str, value: &str) -> Result<(), PackageError> {
    match url::Url::parse(value) {
        Ok(u) if u.scheme() == "https" && u.host_str().is_some() => Ok(()),
        _ => Err(PackageError::new(field, format!("`{value}` must be an https URL such as https://contoso.com/privacy"))),
    }
}

fn check_len(field: &str, value: &str, max: usize) -> Result<(), PackageError> {
    let n = value.chars().count();
    if value.trim().is_empty() {
        return Err(PackageError::new(field, "is empty: Teams requires it"));
    }
    if n > max {
        return Err(PackageError::new(field, format!("is {n} characters; Teams allows at most {max}: shorten it")));
    }
    Ok(())
}

/// The placeholder values, checked.
#[derive(Debug, Clone)]
struct Values {
    app_id: String,
    name: String,
    short_description: String,
    full_description: String,
    developer: String,
    website: String,
    privacy_url: String,
    terms_url: String,
    version: String,
    domain: Option<String>,
    accent_color: String,
}

fn values(bot: &BotConfig, bot_index: usize, info: &AppInfo) -> Result<Values, PackageError> {
    let field = |name: &str| format!("bots[{bot_index}].{name}");
    if !is_guid(&bot.app_id) {
        return Err(PackageError::new(
            field("app_id"),
            format!(
                "`{}` is not a GUID: Teams requires the bot's Entra application (client) id, such as 00000000-0000-0000-0000-000000000000",
                bot.app_id
            ),
        ));
    }
    let name = match &info.name {
        Some(n) => {
            check_len("--name", n, 30)?;
            n.clone()
        }
        None if bot.display_name.trim().is_empty() => {
            return Err(PackageError::new(field("display_name"), "is empty: set the bot's display name in the config, or pass --name"));
        }
        None => {
            check_len(&field("display_name"), &bot.display_name, 30)
                .map_err(|e| PackageError::new(e.field, format!("{} (or pass --name)", e.problem)))?;
            bot.display_name.clone()
        }
    };
    check_len("--short-description", &info.short_description, 80)?;
    check_len("--full-description", &info.full_description, 4000)?;
    check_len("--developer", &info.developer, 32)?;
    if !is_semver(&info.version) {
        return Err(PackageError::new("--version", format!("`{}` is not MAJOR.MINOR.PATCH (numbers only), such as 1.0.0", info.version)));
    }
    let domain = match info.domain.as_deref() {
        Some(d) if !is_hostname(d) => {
            return Err(PackageError::new(
                "--domain",
                format!(
                    "`{d}` is not a host name: give the public host of the messaging endpoint without scheme, port or path, such as bot.contoso.com"
                ),
            ));
        }
        Some(d) => Some(d.to_ascii_lowercase()),
        None => None,
    };
    let website = match (&info.website, &domain) {
        (Some(w), _) => w.clone(),
        (None, Some(d)) => format!("https://{d}/"),
        (None, None) => return Err(PackageError::new("--website", "is required when --domain is not given: pass an https URL")),
    };
    check_https("--website", &website)?;
    let privacy_url = info.privacy_url.clone().unwrap_or_else(|| website.clone());
    check_https("--privacy-url", &privacy_url)?;
    let terms_url = info.terms_url.clone().unwrap_or_else(|| website.clone());
    check_https("--terms-url", &terms_url)?;
    let c = info.accent_color.as_bytes();
    if !(c.len() == 7 && c[0] == b'#' && c[1..].iter().all(u8::is_ascii_hexdigit)) {
        return Err(PackageError::new("--accent-color", format!("`{}` is not a color such as #4F6BED", info.accent_color)));
    }
    Ok(Values {
        app_id: bot.app_id.to_ascii_lowercase(),
        name,
        short_description: info.short_description.clone(),
        full_description: info.full_description.clone(),
        developer: info.developer.clone(),
        website,
        privacy_url,
        terms_url,
        version: info.version.clone(),
        domain,
        accent_color: info.accent_color.clone(),
    })
}

/// Fill the template's `{{KEY}}` placeholders (JSON-escaped) and parse the result.
pub fn render_template(template: &str, vars: &[(&str, &str)]) -> Result<Value, PackageError> {
    let mut text = template.to_owned();
    for (key, value) in vars {
        let escaped = serde_json::to_string(value).map_err(|e| PackageError::new(*key, e.to_string()))?;
        text = text.replace(&format!("{{{{{key}}}}}"), &escaped[1..escaped.len() - 1]);
    }
    if let Some(at) = text.find("{{") {
        let rest = &text[at..];
        let end = rest.find("}}").map_or(rest.len().min(40), |e| e + 2);
        return Err(PackageError::new(
            "manifests/bot.manifest.json",
            format!("placeholder {} has no value: remove it or add a flag for it", &rest[..end]),
        ));
    }
    serde_json::from_str(&text)
        .map_err(|e| PackageError::new("manifests/bot.manifest.json", format!("is not valid JSON after rendering: {e}")))
}

/// Render and check the manifest of `bot` (the `bot_index`-th configured bot).
pub fn render_manifest(bot: &BotConfig, bot_index: usize, info: &AppInfo) -> Result<Value, PackageError> {
    let v = values(bot, bot_index, info)?;
    let mut manifest = render_template(
        BOT_MANIFEST_TEMPLATE,
        &[
            ("APP_ID", &v.app_id),
            ("BOT_NAME", &v.name),
            ("FULL_NAME", &v.name),
            ("SHORT_DESCRIPTION", &v.short_description),
            ("FULL_DESCRIPTION", &v.full_description),
            ("DEVELOPER_NAME", &v.developer),
            ("WEBSITE", &v.website),
            ("PRIVACY_URL", &v.privacy_url),
            ("TERMS_URL", &v.terms_url),
            ("VERSION", &v.version),
            ("DOMAIN", v.domain.as_deref().unwrap_or("")),
            ("ACCENT_COLOR", &v.accent_color),
        ],
    )?;
    if !bot.commands.is_empty() {
        manifest["bots"][0]["commandLists"][0]["commands"] = command_list(bot, bot_index)?;
    }
    // No endpoint domain: no valid domains (the bot needs none; tabs and SSO would).
    if let Some(domains) = manifest.get_mut("validDomains").and_then(Value::as_array_mut) {
        domains.retain(|d| d.as_str().is_some_and(|s| !s.is_empty()));
    }
    check_manifest(&manifest)?;
    Ok(manifest)
}

/// Most commands in one command list (schema v1.29).
const MAX_COMMANDS: usize = 12;

/// The bot's configured commands as the manifest's `commands`, within the schema's limits.
fn command_list(bot: &BotConfig, bot_index: usize) -> Result<Value, PackageError> {
    let field = format!("bots[{bot_index}].commands");
    if bot.commands.len() > MAX_COMMANDS {
        return Err(PackageError::new(field, format!("at most {MAX_COMMANDS} commands ({} given)", bot.commands.len())));
    }
    let mut out = Vec::with_capacity(bot.commands.len());
    for (i, c) in bot.commands.iter().enumerate() {
        let title = c.title.trim();
        if title.is_empty() || title.chars().count() > 128 {
            return Err(PackageError::new(format!("{field}[{i}].title"), "must be 1 to 128 characters"));
        }
        if c.description.chars().count() > 4000 {
            return Err(PackageError::new(format!("{field}[{i}].description"), "must be at most 4000 characters"));
        }
        let mut cmd = serde_json::json!({"title": title, "description": c.description});
        if let Some(prompt) = &c.prompt {
            if prompt.trim().is_empty() || prompt.chars().count() > 4000 {
                return Err(PackageError::new(format!("{field}[{i}].prompt"), "must be 1 to 4000 characters"));
            }
            cmd["type"] = Value::String("prompt".into());
            cmd["prompt"] = Value::String(prompt.clone());
        }
        out.push(cmd);
    }
    Ok(Value::Array(out))
}

/// Structural checks of a rendered manifest (what Teams rejects at upload).
pub fn check_manifest(m: &Value) -> Result<(), PackageError> {
    let s = |path: &str| m.pointer(path).and_then(Value::as_str);
    for key in ["manifestVersion", "version", "id", "developer", "name", "description", "icons", "accentColor"] {
        if m.get(key).is_none() {
            return Err(PackageError::new(
                format!("manifest.{key}"),
                "is missing: Teams requires it; restore it in manifests/bot.manifest.json",
            ));
        }
    }
    if s("/manifestVersion") != Some("1.29") {
        return Err(PackageError::new("manifest.manifestVersion", "must be \"1.29\" (the schema this template follows)"));
    }
    for path in ["/id", "/bots/0/botId", "/webApplicationInfo/id"] {
        if !s(path).is_some_and(is_guid) {
            return Err(PackageError::new(format!("manifest{}", path.replace('/', ".")), "must be a GUID (the bot's app id)"));
        }
    }
    if s("/icons/color") != Some("color.png") || s("/icons/outline") != Some("outline.png") {
        return Err(PackageError::new("manifest.icons", "must name color.png and outline.png, the files in the package"));
    }
    let domains = m.get("validDomains").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    for d in domains {
        let d = d.as_str().unwrap_or_default();
        if !is_hostname(d.trim_start_matches("*.")) {
            return Err(PackageError::new("manifest.validDomains", format!("`{d}` is not a host name (no scheme or path)")));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- icons

/// An RGBA image, row-major, 4 bytes per pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgba {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

impl Rgba {
    pub fn new(width: u32, height: u32, fill: [u8; 4]) -> Self {
        Self { width, height, pixels: fill.repeat((width * height) as usize) }
    }

    pub fn pixel(&self, x: u32, y: u32) -> [u8; 4] {
        let i = ((y * self.width + x) * 4) as usize;
        [self.pixels[i], self.pixels[i + 1], self.pixels[i + 2], self.pixels[i + 3]]
    }

    fn set(&mut self, x: u32, y: u32, c: [u8; 4]) {
        let i = ((y * self.width + x) * 4) as usize;
        self.pixels[i..i + 4].copy_from_slice(&c);
    }
}

/// The "gate" mark: two posts and a lintel, in a `size`-pixel square, `t` pixels thick, `m` margin.
fn gate(x: u32, y: u32, size: u32, m: u32, t: u32) -> bool {
    let inside = x >= m && x < size - m && y >= m && y < size - m;
    let lintel = y < m + t;
    let posts = x < m + t || x >= size - m - t;
    let bar = y >= size / 2 - t / 2 && y < size / 2 - t / 2 + t && x >= m + 2 * t && x < size - m - 2 * t;
    inside && (lintel || posts || bar)
}

const WHITE: [u8; 4] = [255, 255, 255, 255];

/// The 192×192 color icon: a white gate on the accent color, fully opaque.
pub fn color_icon(accent: [u8; 3]) -> Rgba {
    let mut img = Rgba::new(COLOR_SIZE, COLOR_SIZE, [accent[0], accent[1], accent[2], 255]);
    for y in 0..COLOR_SIZE {
        for x in 0..COLOR_SIZE {
            if gate(x, y, COLOR_SIZE, 44, 18) {
                img.set(x, y, WHITE);
            }
        }
    }
    img
}

/// The 32×32 outline icon: a white gate on a fully transparent background.
pub fn outline_icon() -> Rgba {
    let mut img = Rgba::new(OUTLINE_SIZE, OUTLINE_SIZE, [0, 0, 0, 0]);
    for y in 0..OUTLINE_SIZE {
        for x in 0..OUTLINE_SIZE {
            if gate(x, y, OUTLINE_SIZE, 5, 3) {
                img.set(x, y, WHITE);
            }
        }
    }
    img
}

fn parse_hex_color(c: &str) -> [u8; 3] {
    let h = |i: usize| c.get(i..i + 2).and_then(|s| u8::from_str_radix(s, 16).ok()).unwrap_or(0);
    [h(1), h(3), h(5)]
}

// ---------------------------------------------------------------- PNG

/// The most bytes [`decode_png`] allocates for one image (a 192×192 RGBA icon needs 147,456).
const PNG_DECODE_LIMIT: usize = 1 << 20;

/// Encode an RGBA image as PNG (8-bit RGBA).
pub fn encode_png(img: &Rgba) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, img.width, img.height);
    encoder.set_color(png::ColorType::Rgba);
    encoder.set_depth(png::BitDepth::Eight);
    // Unfiltered rows: simple readers (and the manifest check script) see the pixels as they are.
    encoder.set_filter(png::Filter::NoFilter);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&img.pixels)?;
    writer.finish()?;
    Ok(out)
}

/// Decode an 8-bit RGBA, non-interlaced PNG (what [`encode_png`] writes), checking every CRC.
pub fn decode_png(data: &[u8]) -> Result<Rgba, String> {
    let decoder = png::Decoder::new_with_limits(std::io::Cursor::new(data), png::Limits { bytes: PNG_DECODE_LIMIT });
    let mut reader = decoder.read_info().map_err(|e| format!("not a valid PNG file: {e}"))?;
    let info = reader.info();
    if (info.color_type, info.bit_depth, info.interlaced) != (png::ColorType::Rgba, png::BitDepth::Eight, false) {
        return Err("only 8-bit RGBA, non-interlaced PNGs are supported".into());
    }
    let size = reader.output_buffer_size().ok_or("the image is too large")?;
    let mut pixels = vec![0; size];
    let frame = reader.next_frame(&mut pixels).map_err(|e| format!("not a valid PNG file: {e}"))?;
    pixels.truncate(frame.buffer_size());
    Ok(Rgba { width: frame.width, height: frame.height, pixels })
}

/// The icon checks Teams applies: the color icon is 192×192; the outline icon is 32×32, white on a
/// transparent background (every pixel is fully transparent or white, and the corners are transparent).
pub fn check_icons(color_png: &[u8], outline_png: &[u8]) -> Result<(), PackageError> {
    let color = decode_png(color_png).map_err(|e| PackageError::new("color.png", e))?;
    if (color.width, color.height) != (COLOR_SIZE, COLOR_SIZE) {
        return Err(PackageError::new("color.png", format!("is {}×{}; Teams needs 192×192", color.width, color.height)));
    }
    let outline = decode_png(outline_png).map_err(|e| PackageError::new("outline.png", e))?;
    if (outline.width, outline.height) != (OUTLINE_SIZE, OUTLINE_SIZE) {
        return Err(PackageError::new("outline.png", format!("is {}×{}; Teams needs 32×32", outline.width, outline.height)));
    }
    let last = OUTLINE_SIZE - 1;
    if [(0, 0), (last, 0), (0, last), (last, last)].iter().any(|&(x, y)| outline.pixel(x, y)[3] != 0) {
        return Err(PackageError::new("outline.png", "needs a transparent background (the corners are not transparent)"));
    }
    for px in outline.pixels.chunks(4) {
        if px[3] != 0 && px[..3] != [255, 255, 255] {
            return Err(PackageError::new("outline.png", "must be white on transparent: a visible pixel is not white"));
        }
    }
    if !outline.pixels.chunks(4).any(|px| px[3] != 0) {
        return Err(PackageError::new("outline.png", "is fully transparent: draw the outline in white"));
    }
    Ok(())
}

// ---------------------------------------------------------------- package

/// A built package, in memory.
#[derive(Debug, Clone)]
pub struct Package {
    pub manifest: Value,
    /// `(entry name, bytes)` in [`PACKAGE_ENTRIES`] order.
    pub files: Vec<(&'static str, Vec<u8>)>,
}

/// Render the manifest and icons of `bot` and check them all.
pub fn build(bot: &BotConfig, bot_index: usize, info: &AppInfo) -> Result<Package, PackageError> {
    let manifest = render_manifest(bot, bot_index, info)?;
    let png_error = |field: &str, e: png::EncodingError| PackageError::new(field, format!("could not be encoded: {e}"));
    let color = encode_png(&color_icon(parse_hex_color(&info.accent_color))).map_err(|e| png_error("color.png", e))?;
    let outline = encode_png(&outline_icon()).map_err(|e| png_error("outline.png", e))?;
    check_icons(&color, &outline)?;
    let mut text = serde_json::to_vec_pretty(&manifest).map_err(|e| PackageError::new("manifest.json", e.to_string()))?;
    text.push(b'\n');
    Ok(Package { manifest, files: vec![("manifest.json", text), ("color.png", color), ("outline.png", outline)] })
}

/// The zip of a package (entries in [`PACKAGE_ENTRIES`] order, at the root, deflated).
pub fn zip_package(pkg: &Package) -> anyhow::Result<Vec<u8>> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated).unix_permissions(0o644);
    for (name, data) in &pkg.files {
        w.start_file(*name, opts)?;
        w.write_all(data)?;
    }
    Ok(w.finish()?.into_inner())
}

/// Where `package` writes the zip of `tenant`.
pub fn package_path(out_dir: &Path, tenant: &str) -> PathBuf {
    out_dir.join(format!("{tenant}.zip"))
}

/// Build, check and write `<out_dir>/<tenant>.zip`; returns its path and the package.
pub fn write_package(
    bot: &BotConfig,
    bot_index: usize,
    info: &AppInfo,
    tenant: &str,
    out_dir: &Path,
) -> anyhow::Result<(PathBuf, Package)> {
    if !is_package_name(tenant) {
        return Err(PackageError::new(
            "--tenant",
            format!(
                "`{tenant}` is not usable as a file name: use letters, digits, dots, dashes or underscores (a tenant id or short name)"
            ),
        )
        .into());
    }
    let pkg = build(bot, bot_index, info)?;
    let bytes = zip_package(&pkg)?;
    std::fs::create_dir_all(out_dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", out_dir.display()))?;
    let path = package_path(out_dir, tenant);
    // A fresh, exclusively created temporary file (never a name someone could plant a symlink at), then
    // an atomic rename over the target.
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{tenant}.zip."))
        .suffix(".tmp")
        .tempfile_in(out_dir)
        .map_err(|e| anyhow::anyhow!("writing in {}: {e}", out_dir.display()))?;
    std::io::Write::write_all(&mut tmp, &bytes).map_err(|e| anyhow::anyhow!("writing {}: {e}", tmp.path().display()))?;
    tmp.persist(&path).map_err(|e| anyhow::anyhow!("writing {}: {}", path.display(), e.error))?;
    Ok((path, pkg))
}

// ---------------------------------------------------------------- consent

/// The Entra login host of a cloud.
pub fn login_host(cloud: Cloud) -> &'static str {
    match cloud {
        Cloud::Public => "login.microsoftonline.com",
        Cloud::Usgov => "login.microsoftonline.us",
        Cloud::China => "login.partner.microsoftonline.cn",
    }
}

/// The admin-consent link a tenant's administrator opens to grant the bot's app access.
pub fn consent_url(cloud: Cloud, tenant: &str, app_id: &str) -> Result<String, PackageError> {
    if !(is_guid(tenant) || is_hostname(tenant)) {
        return Err(PackageError::new(
            "--tenant",
            format!("`{tenant}` is not a tenant id (a GUID) or a tenant domain such as contoso.onmicrosoft.com"),
        ));
    }
    if !is_guid(app_id) {
        return Err(PackageError::new("--bot", format!("`{app_id}` is not a GUID: use the bot's Entra application (client) id")));
    }
    Ok(format!("https://{}/{tenant}/adminconsent?client_id={app_id}", login_host(cloud)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::io::Read as _;

    use super::*;

    const APP: &str = "11111111-2222-3333-4444-555555555555";

    fn bot(app_id: &str, name: &str) -> BotConfig {
        let mut b: BotConfig = toml::from_str(&format!("app_id = \"{app_id}\"\nallowed_tenants = [\"t\"]\n")).unwrap();
        b.display_name = name.into();
        b
    }

    fn info() -> AppInfo {
        AppInfo { domain: Some("bot.contoso.com".into()), ..AppInfo::default() }
    }

    #[test]
    fn png_round_trips_dimensions_and_alpha() {
        let png = encode_png(&outline_icon()).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[12..16], b"IHDR");
        let img = decode_png(&png).unwrap();
        assert_eq!((img.width, img.height), (32, 32));
        assert_eq!(img.pixel(0, 0)[3], 0, "background is transparent");
        assert_eq!(img.pixel(6, 16), WHITE, "the gate's post is white");
        assert_eq!(img, outline_icon());

        let color = decode_png(&encode_png(&color_icon([0x4F, 0x6B, 0xED])).unwrap()).unwrap();
        assert_eq!((color.width, color.height), (192, 192));
        assert!(color.pixels.chunks(4).all(|p| p[3] == 255), "the color icon is opaque");
        assert_eq!(color.pixel(0, 0), [0x4F, 0x6B, 0xED, 255]);

        let mut bad = png.clone();
        bad[20] ^= 1;
        let err = decode_png(&bad).unwrap_err();
        assert!(err.to_ascii_uppercase().contains("CRC"), "{err}");
        assert!(decode_png(b"GIF89a").is_err());
        assert!(decode_png(&png[..png.len() / 2]).is_err(), "truncated");

        // Another colour type is refused, even with the right size.
        let mut rgb = Vec::new();
        let mut encoder = png::Encoder::new(&mut rgb, 32, 32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.write_header().unwrap().write_image_data(&[255; 32 * 32 * 3]).unwrap();
        assert!(decode_png(&rgb).unwrap_err().contains("RGBA"));
        let color = encode_png(&color_icon([0, 0, 0])).unwrap();
        assert!(check_icons(&color, &rgb).unwrap_err().problem.contains("RGBA"));
    }

    #[test]
    fn icon_checks_refuse_wrong_sizes_and_opaque_outlines() {
        let color = encode_png(&color_icon([0, 0, 0])).unwrap();
        let outline = encode_png(&outline_icon()).unwrap();
        check_icons(&color, &outline).unwrap();
        assert_eq!(check_icons(&outline, &outline).unwrap_err().field, "color.png");
        assert_eq!(check_icons(&color, &color).unwrap_err().field, "outline.png");
        let opaque = encode_png(&Rgba::new(32, 32, [255, 255, 255, 255])).unwrap();
        assert!(check_icons(&color, &opaque).unwrap_err().problem.contains("transparent"));
        let mut red = outline_icon();
        red.set(6, 16, [255, 0, 0, 255]);
        assert!(check_icons(&color, &encode_png(&red).unwrap()).unwrap_err().problem.contains("white"));
    }

    #[test]
    fn configured_commands_and_prompt_starters_replace_the_template_list() {
        let mut b = bot(APP, "Ada");
        b.commands = vec![
            crate::config::BotCommand { title: "summarize".into(), description: "Summarize this chat".into(), prompt: None },
            crate::config::BotCommand {
                title: "Plan my week".into(),
                description: String::new(),
                prompt: Some("Plan my week from my calendar".into()),
            },
        ];
        let m = render_manifest(&b, 0, &info()).unwrap();
        let cmds = &m["bots"][0]["commandLists"][0]["commands"];
        assert_eq!(cmds[0], serde_json::json!({"title": "summarize", "description": "Summarize this chat"}));
        assert_eq!(cmds[1]["type"], "prompt");
        assert_eq!(cmds[1]["prompt"], "Plan my week from my calendar");
        let default = render_manifest(&bot(APP, "Ada"), 0, &info()).unwrap();
        assert_eq!(default["bots"][0]["commandLists"][0]["commands"][0]["title"], "help");
        b.commands =
            (0..13).map(|i| crate::config::BotCommand { title: format!("c{i}"), description: String::new(), prompt: None }).collect();
        assert_eq!(render_manifest(&b, 2, &info()).unwrap_err().field, "bots[2].commands");
        b.commands = vec![crate::config::BotCommand { title: " ".into(), description: String::new(), prompt: None }];
        assert_eq!(render_manifest(&b, 0, &info()).unwrap_err().field, "bots[0].commands[0].title");
    }

    #[test]
    fn manifest_is_rendered_from_the_bot_and_flags() {
        let m = render_manifest(&bot(APP, "Ada \"the\" Agent"), 0, &info()).unwrap();
        assert_eq!(m["$schema"], "https://developer.microsoft.com/en-us/json-schemas/teams/v1.29/MicrosoftTeams.schema.json");
        assert_eq!(m["manifestVersion"], "1.29");
        assert_eq!(m["id"], APP);
        assert_eq!(m["bots"][0]["botId"], APP);
        assert_eq!(m["bots"][0]["scopes"], serde_json::json!(["personal", "team", "groupChat"]));
        assert_eq!(m["name"]["short"], "Ada \"the\" Agent", "values are JSON-escaped");
        assert_eq!(m["validDomains"], serde_json::json!(["bot.contoso.com"]));
        assert_eq!(m["webApplicationInfo"]["resource"], format!("api://botid-{APP}"));
        assert_eq!(m["developer"]["websiteUrl"], "https://bot.contoso.com/");
        assert_eq!(m["version"], "1.0.0");
        assert!(!serde_json::to_string(&m).unwrap().contains("{{"));

        let no_domain = AppInfo { domain: None, website: Some("https://contoso.com".into()), ..AppInfo::default() };
        let m = render_manifest(&bot(APP, "Ada"), 0, &no_domain).unwrap();
        assert_eq!(m["validDomains"], serde_json::json!([]));
    }

    #[test]
    fn validation_errors_name_the_field() {
        let err = |b: BotConfig, i: AppInfo| render_manifest(&b, 3, &i).unwrap_err();
        let e = err(bot("not-a-guid", "Ada"), info());
        assert_eq!(e.field, "bots[3].app_id");
        assert!(e.problem.contains("GUID"));
        assert_eq!(err(bot(APP, ""), info()).field, "bots[3].display_name");
        assert_eq!(err(bot(APP, &"x".repeat(31)), info()).field, "bots[3].display_name");
        assert_eq!(err(bot(APP, "Ada"), AppInfo { name: Some("y".repeat(31)), ..info() }).field, "--name");
        assert_eq!(err(bot(APP, "Ada"), AppInfo { short_description: "s".repeat(81), ..info() }).field, "--short-description");
        assert_eq!(err(bot(APP, "Ada"), AppInfo { full_description: "f".repeat(4001), ..info() }).field, "--full-description");
        for v in ["1.0.0", "0.0.0", "10.20.30", "999999999.0.1"] {
            assert!(is_semver(v), "{v}");
        }
        for v in ["1.0", "1.0.0.0", "1.0.0-beta", "1.0.0+build", "01.0.0", "1.00.0", "v1.0.0", " 1.0.0", "1000000000.0.0", "", "1..0"] {
            assert!(!is_semver(v), "{v}");
        }
        for v in ["1.0", "1.0.0-beta", "01.0.0", "v1.0.0"] {
            assert_eq!(err(bot(APP, "Ada"), AppInfo { version: v.into(), ..info() }).field, "--version", "{v}");
        }
        for d in ["https://bot.contoso.com", "bot.contoso.com/api", "bot.contoso.com:443", "localhost"] {
            assert_eq!(err(bot(APP, "Ada"), AppInfo { domain: Some(d.into()), ..info() }).field, "--domain", "{d}");
        }
        assert_eq!(err(bot(APP, "Ada"), AppInfo { website: Some("http://contoso.com".into()), ..info() }).field, "--website");
        assert_eq!(err(bot(APP, "Ada"), AppInfo { privacy_url: Some("contoso.com/p".into()), ..info() }).field, "--privacy-url");
        assert_eq!(err(bot(APP, "Ada"), AppInfo { domain: None, ..info() }).field, "--website");
        assert_eq!(err(bot(APP, "Ada"), AppInfo { accent_color: "blue".into(), ..info() }).field, "--accent-color");
    }

    #[test]
    fn zip_has_exactly_the_three_entries() {
        let pkg = build(&bot(APP, "Ada"), 0, &info()).unwrap();
        let bytes = zip_package(&pkg).unwrap();
        let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
        let names: Vec<String> = z.file_names().map(|n| n.unwrap().into_owned()).collect();
        assert_eq!(names, PACKAGE_ENTRIES);
        let mut manifest = String::new();
        z.by_name("manifest.json").unwrap().read_to_string(&mut manifest).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&manifest).unwrap(), pkg.manifest);
        let mut png = Vec::new();
        z.by_name("outline.png").unwrap().read_to_end(&mut png).unwrap();
        assert_eq!(decode_png(&png).unwrap().width, 32);
    }

    #[test]
    fn write_package_refuses_unsafe_tenant_names() {
        let dir = tempfile::tempdir().unwrap();
        let e = write_package(&bot(APP, "Ada"), 0, &info(), "../x", dir.path()).unwrap_err();
        assert!(e.to_string().contains("--tenant"), "{e}");
        let (path, _) = write_package(&bot(APP, "Ada"), 0, &info(), "contoso", dir.path()).unwrap();
        assert_eq!(path, dir.path().join("contoso.zip"));
        assert!(path.exists());
    }

    #[test]
    fn consent_urls_per_cloud() {
        let t = "aaaaaaaa-0000-0000-0000-000000000001";
        assert_eq!(
            consent_url(Cloud::Public, t, APP).unwrap(),
            format!("https://login.microsoftonline.com/{t}/adminconsent?client_id={APP}")
        );
        assert!(consent_url(Cloud::Usgov, t, APP).unwrap().starts_with("https://login.microsoftonline.us/"));
        assert!(consent_url(Cloud::China, t, APP).unwrap().starts_with("https://login.partner.microsoftonline.cn/"));
        assert!(consent_url(Cloud::Public, "contoso.onmicrosoft.com", APP).is_ok());
        assert_eq!(consent_url(Cloud::Public, "a/b", APP).unwrap_err().field, "--tenant");
        assert_eq!(consent_url(Cloud::Public, t, "abc").unwrap_err().field, "--bot");
    }
}
