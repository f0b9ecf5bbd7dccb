// Images are shrunk in the browser before upload: the model never sees more than about 1.8k pixels a side,
// and a phone photo sent as it is would cost seconds of upload and decoding for nothing.

export const MAX_SIDE = 1792;

// Decode with the EXIF orientation applied, scale the longest side to `maxSide`, and encode:
// JPEG for photos (small), PNG for the rest (screenshots and diagrams keep sharp text).
export async function prepareImage(file, maxSide = MAX_SIDE) {
  if (!file.type.startsWith("image/")) throw new Error(`${file.name || "the file"} is not an image`);
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch {
    throw new Error(`${file.name || "the image"} could not be read as an image`);
  }
  const scale = Math.min(1, maxSide / Math.max(bitmap.width, bitmap.height));
  const width = Math.max(1, Math.round(bitmap.width * scale));
  const height = Math.max(1, Math.round(bitmap.height * scale));
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff"; // transparent parts become white, as on a page, not black
  ctx.fillRect(0, 0, width, height);
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(bitmap, 0, 0, width, height);
  bitmap.close();
  const photo = file.type === "image/jpeg" || file.type === "image/heic" || file.type === "image/avif";
  const url = photo ? canvas.toDataURL("image/jpeg", 0.9) : canvas.toDataURL("image/png");
  return { url, width, height, name: file.name || "pasted image" };
}

// Files from a drop or paste: only images (text or other files dropped along are left alone).
export function imageFiles(list) {
  return [...(list || [])].filter((f) => f.kind === undefined || f.kind === "file")
    .map((f) => (f.getAsFile ? f.getAsFile() : f))
    .filter((f) => f && f.type.startsWith("image/"));
}
