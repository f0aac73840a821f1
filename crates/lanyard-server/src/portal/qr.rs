//! QR codes as the portal shows them: SVG rendered by the server (no script, no image request),
//! dark modules on white with the quiet zone, labelled for assistive technology by the page.

use qrcode::QrCode;
use qrcode::render::svg;

/// `text` as an SVG QR code (error correction M), or `None` when it is too long for one.
pub(crate) fn qr_svg(text: &str) -> Option<String> {
    let code = QrCode::with_error_correction_level(text.as_bytes(), qrcode::EcLevel::M).ok()?;
    let svg = code
        .render::<svg::Color<'_>>()
        .min_dimensions(240, 240)
        .dark_color(svg::Color("#000000"))
        .light_color(svg::Color("#ffffff"))
        .quiet_zone(true)
        .build();
    // The page's own markup labels the image; the XML declaration is not HTML.
    let start = svg.find("<svg")?;
    Some(svg[start..].replacen("<svg", "<svg role=\"img\" aria-label=\"QR code of the link below\"", 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_becomes_an_svg_and_an_impossible_text_does_not() {
        let svg = qr_svg("https://lanyard.example/m/abc").unwrap_or_default();
        assert!(svg.starts_with("<svg role=\"img\"") && svg.ends_with("</svg>"), "{svg}");
        assert!(qr_svg(&"x".repeat(5000)).is_none(), "more than a QR code holds");
    }
}
